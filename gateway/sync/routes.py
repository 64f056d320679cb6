"""The original backend's sync routes, on the same pipeline as `sync.push`/`sync.pull`.

`POST /sync/` takes the original payload (`threads` and `messages`, and `pain_reports`
beside them, each item with an `operation` insert/update/delete, plus `client_id` and
`sync_timestamp`). Each item
becomes a mutation whose id is the request's key (its `Idempotency-Key` header, else
`client_id` with `sync_timestamp`) and the item's position, so a retried POST is
recognised and not applied twice; a request with neither always applies.
`GET /sync/?since=V&limit=N` returns the changes after version V. Both need
`Authorization: Bearer <token>` of a patient.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Annotated, Any, Literal
from uuid import UUID

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.auth import PatientIdentity
from gateway.http.rest import BearerAuth, error_response, read_body
from gateway.sync.service import DEFAULT_PULL_LIMIT, SyncService, WritesBusy
from protocol.codec import describe
from protocol.codes import ErrorCode
from protocol.frames import (
    MAX_MUTATIONS,
    MAX_PULL_LIMIT,
    MAX_VERSION,
    ClientText,
    ClientTime,
    Intensity,
    PainReportDetails,
    SvgPath,
)

Operation = Literal["insert", "update", "delete"]


class LegacyItem(ClientText):
    # The original clients sent Realm objects with more fields than these: ignore them.
    model_config = ConfigDict(extra="ignore")
    id: UUID
    operation: Operation


class LegacyThread(LegacyItem):
    title: str = ""


class LegacyMessage(LegacyItem):
    thread_id: UUID
    role: str = "user"
    content: str = ""
    svg_path: SvgPath | None = None
    created_at: ClientTime | None = None

    @field_validator("svg_path", mode="before")
    @classmethod
    def _no_region(cls, value: object) -> object:
        return None if value == "" else value  # how the original clients said "none"


class LegacyPainReport(LegacyItem, PainReportDetails):
    # In the same flat style; `intensity` is required for insert and update (the mutation
    # is rejected naming it otherwise), not for delete.
    intensity: Intensity | None = None


class LegacySync(ClientText):
    model_config = ConfigDict(extra="ignore")
    threads: list[LegacyThread] = []
    messages: list[LegacyMessage] = []
    pain_reports: list[LegacyPainReport] = []
    client_id: Annotated[str, Field(min_length=1, max_length=128)]
    sync_timestamp: int | float | None = None

    @model_validator(mode="after")
    def _not_too_many(self) -> LegacySync:
        if len(self.threads) + len(self.messages) + len(self.pain_reports) > MAX_MUTATIONS:
            raise ValueError(
                f"at most {MAX_MUTATIONS} threads, messages and pain reports per request"
            )
        return self


class PullQuery(BaseModel):
    since: Annotated[int, Field(ge=0, le=MAX_VERSION)] = 0
    limit: Annotated[int, Field(ge=1, le=MAX_PULL_LIMIT)] = DEFAULT_PULL_LIMIT


class SyncRoutes:
    def __init__(self, service: SyncService, auth: BearerAuth) -> None:
        self.service = service
        self.auth = auth

    async def endpoint(self, request: Request) -> Response:
        identity = await self.auth.patient(request, "sync")
        if isinstance(identity, JSONResponse):
            return identity
        if request.method == "GET":
            return await self._get(request, identity)
        return await self._post(request, identity)

    async def _post(self, request: Request, identity: PatientIdentity) -> Response:
        received = time.time()
        payload = await read_body(request, LegacySync)
        if isinstance(payload, JSONResponse):
            return payload
        device = identity.device_id or payload.client_id
        key = _request_key(request, payload)
        items: list[tuple[str, LegacyItem]] = [("thread", t) for t in payload.threads]
        items += [("message", m) for m in payload.messages]
        items += [("pain_report", r) for r in payload.pain_reports]
        mutations = [_mutation(key, n, entity, item) for n, (entity, item) in enumerate(items)]
        try:
            result = await self.service.push(
                identity.patient_id, device, mutations, origin=received
            )
        except WritesBusy as busy:
            return error_response(429, "busy", str(busy), {"Retry-After": "1"})
        if any(r.code == ErrorCode.FORBIDDEN for r in result.rejected):
            self.auth.refused(identity, "POST sync")  # another patient's data
        return JSONResponse(
            {
                "version": result.version,
                "applied": result.applied,
                "duplicates": result.duplicates,
                "rejected": [r.model_dump() for r in result.rejected],
            }
        )

    async def _get(self, request: Request, identity: PatientIdentity) -> Response:
        try:
            query = PullQuery.model_validate(dict(request.query_params))
        except ValidationError as exc:
            return error_response(422, "invalid", describe(exc))
        pulled = await self.service.pull(identity.patient_id, query.since, query.limit)
        return Response(
            orjson.dumps(
                {
                    "version": pulled.version,
                    "changes": [c.model_dump(mode="json") for c in pulled.changes],
                    "has_more": pulled.has_more,
                }
            ),
            media_type="application/json",
        )


def _mutation(key: str | None, position: int, entity: str, item: LegacyItem) -> dict[str, Any]:
    fields = item.model_dump(mode="json", exclude={"operation"}, exclude_none=True)
    mutation: dict[str, Any] = {
        # The request's own key and the item's place in it: a retried POST is a duplicate;
        # without a key each POST applies (an upsert of unchanged content changes nothing
        # but the version).
        "mutation_id": f"rest:{key}:{position}" if key else f"rest:{uuid.uuid4()}",
        "entity": entity,
        "id": fields.pop("id"),
    }
    if item.operation == "delete":
        mutation.update(op="delete", data=None)
    else:
        mutation.update(op="upsert", data=fields)
    return mutation


def _request_key(request: Request, payload: LegacySync) -> str | None:
    """What names this request across retries: its Idempotency-Key header, else the
    client's id with its sync_timestamp; None when it has neither."""
    given = request.headers.get("idempotency-key")
    if given:
        material: list[Any] = ["header", given]
    elif payload.sync_timestamp is not None:
        material = ["timestamp", payload.client_id, payload.sync_timestamp]
    else:
        return None
    return hashlib.sha256(orjson.dumps(material)).hexdigest()[:32]
