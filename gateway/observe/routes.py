"""The admin HTTP API: care teams and the audit trail, for `admin` tokens only.

`POST /admin/care-team` `{clinician_id, patient_id, expires_at?}` → 201 with the grant;
`DELETE /admin/care-team/{clinician_id}/{patient_id}` → 204, or 404 when there was none;
`GET /admin/care-team?patient_id=|clinician_id=` → the grants in force;
`GET /admin/audit?patient_id=&since=&after=&limit=` → a page of the patient's trail.

And for clinicians: `GET /v1/care-team` → the patients on their own care team (what the
console lists to observe).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.http.rest import BearerAuth, error_response, read_body
from gateway.observe.care_team import CareTeams
from protocol.codec import describe
from protocol.frames import ClientText, ClientTime
from storage.care_team import Grant


class GrantBody(ClientText):
    model_config = ConfigDict(extra="forbid")
    clinician_id: UUID
    patient_id: UUID
    expires_at: ClientTime | None = None


class GrantsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient_id: UUID | None = None
    clinician_id: UUID | None = None


class AuditQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient_id: UUID
    since: ClientTime | None = None
    after: Annotated[int, Field(ge=0)] = 0
    limit: Annotated[int, Field(ge=1, le=1000)] = 500


class AdminRoutes:
    def __init__(self, care_teams: CareTeams, auth: BearerAuth) -> None:
        self.care_teams = care_teams
        self.auth = auth

    def routes(self) -> list[Route]:
        return [
            Route("/admin/care-team", self.care_team, methods=["GET", "POST"]),
            Route("/admin/care-team/{clinician_id}/{patient_id}", self.revoke, methods=["DELETE"]),
            Route("/admin/audit", self.audit, methods=["GET"]),
        ]

    async def care_team(self, request: Request) -> Response:
        admin = await self.auth.admin(request)
        if isinstance(admin, JSONResponse):
            return admin
        if request.method == "POST":
            body = await read_body(request, GrantBody)
            if isinstance(body, JSONResponse):
                return body
            granted = await self.care_teams.grant(
                admin.sub, body.clinician_id, body.patient_id, body.expires_at
            )
            return JSONResponse(_grant(granted), status_code=201)
        query = _query(request, GrantsQuery)
        if isinstance(query, JSONResponse):
            return query
        grants = await self.care_teams.grants(
            patient_id=query.patient_id, clinician_id=query.clinician_id
        )
        return JSONResponse({"grants": [_grant(g) for g in grants]})

    async def revoke(self, request: Request) -> Response:
        admin = await self.auth.admin(request)
        if isinstance(admin, JSONResponse):
            return admin
        ids: dict[str, UUID] = {}
        for name in ("clinician_id", "patient_id"):
            try:
                ids[name] = UUID(request.path_params[name])
            except ValueError:
                return error_response(422, "invalid", f"{name}: must be a UUID")
        if not await self.care_teams.revoke(admin.sub, ids["clinician_id"], ids["patient_id"]):
            return error_response(404, "not_found", "no such grant")
        return Response(status_code=204)

    async def audit(self, request: Request) -> Response:
        admin = await self.auth.admin(request)
        if isinstance(admin, JSONResponse):
            return admin
        query = _query(request, AuditQuery)
        if isinstance(query, JSONResponse):
            return query
        page = await self.care_teams.trail(
            query.patient_id, since=query.since, after_id=query.after, limit=query.limit
        )
        return JSONResponse(
            {"events": [_json(row.as_json()) for row in page.rows], "next_after": page.next_after}
        )


class ClinicianRoutes:
    def __init__(self, care_teams: CareTeams, auth: BearerAuth) -> None:
        self.care_teams = care_teams
        self.auth = auth

    def routes(self) -> list[Route]:
        return [Route("/v1/care-team", self.my_patients, methods=["GET"])]

    async def my_patients(self, request: Request) -> Response:
        """The grants in force naming the caller: whom they may observe, until when."""
        clinician = await self.auth.clinician(request, "/v1/care-team")
        if isinstance(clinician, JSONResponse):
            return clinician
        grants = await self.care_teams.grants(clinician_id=clinician.sub)
        patients = [
            _json(
                {
                    "patient_id": g.patient_id,
                    "granted_at": g.granted_at,
                    "expires_at": g.expires_at,
                }
            )
            for g in grants
        ]
        return JSONResponse({"patients": patients})


Query = TypeVar("Query", bound=BaseModel)


def _query(request: Request, model: type[Query]) -> Query | JSONResponse:
    try:
        return model.model_validate(dict(request.query_params))
    except ValidationError as exc:
        return error_response(422, "invalid", describe(exc))


def _grant(grant: Grant) -> dict[str, Any]:
    return _json(
        {
            "clinician_id": grant.clinician_id,
            "patient_id": grant.patient_id,
            "granted_by": grant.granted_by,
            "granted_at": grant.granted_at,
            "expires_at": grant.expires_at,
        }
    )


def _json(values: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (v.isoformat() if isinstance(v, datetime) else str(v) if isinstance(v, UUID) else v)
        for k, v in values.items()
    }
