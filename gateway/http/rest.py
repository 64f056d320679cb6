"""What the original backend's HTTP routes share: the error body, the patient behind a
bearer token, and reading a JSON body."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar
from uuid import UUID

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.auth import (
    AdminIdentity,
    Authenticator,
    AuthError,
    ClinicianIdentity,
    PatientIdentity,
    Principal,
)
from protocol.codec import describe

Body = TypeVar("Body", bound=BaseModel)
Role = TypeVar("Role", PatientIdentity, ClinicianIdentity, AdminIdentity)


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


# Told of every request refused as forbidden: (who, what they asked for, whose data).
RefusalHook = Callable[[Principal, str, UUID | None], None]


class BearerAuth:
    def __init__(self, authenticator: Authenticator, on_refused: RefusalHook | None = None) -> None:
        self.authenticator = authenticator
        self.on_refused = on_refused

    def refused(self, principal: Principal, action: str, patient_id: UUID | None = None) -> None:
        """A route refused the request as forbidden (the audit trail hears of it)."""
        if self.on_refused is not None:
            self.on_refused(principal, action, patient_id)

    async def patient(self, request: Request, purpose: str) -> PatientIdentity | JSONResponse:
        """The patient behind `Authorization: Bearer`, or the 401/403 answer."""
        return await self._one_of(request, PatientIdentity, purpose, f"{purpose} is for patients")

    async def clinician(self, request: Request, purpose: str) -> ClinicianIdentity | JSONResponse:
        """The clinician behind `Authorization: Bearer`, or the 401/403 answer."""
        refusal = f"{purpose} is for clinicians"
        return await self._one_of(request, ClinicianIdentity, purpose, refusal)

    async def admin(self, request: Request) -> AdminIdentity | JSONResponse:
        """The admin behind `Authorization: Bearer`, or the 401/403 answer."""
        refusal = "the admin API takes admin tokens only"
        return await self._one_of(request, AdminIdentity, "admin", refusal)

    async def _one_of(
        self, request: Request, role: type[Role], purpose: str, refusal: str
    ) -> Role | JSONResponse:
        principal = await self.principal(request)
        if isinstance(principal, JSONResponse) or isinstance(principal, role):
            return principal
        self.refused(principal, f"{request.method} {purpose}")
        return error_response(403, "forbidden", refusal)

    async def principal(self, request: Request) -> Principal | JSONResponse:
        """Whoever `Authorization: Bearer` names, or the 401 answer."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return error_response(
                401, "unauthenticated", "Authorization: a Bearer token is required"
            )
        try:
            return await self.authenticator.verify(token.strip())
        except AuthError as exc:
            return error_response(401, "unauthenticated", str(exc))


async def read_body(request: Request, model: type[Body]) -> Body | JSONResponse:
    """The JSON body as `model`, or 400 (not JSON) / 422 (naming the wrong field)."""
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return error_response(400, "bad_frame", "body: not valid JSON")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        return error_response(422, "invalid", describe(exc))
