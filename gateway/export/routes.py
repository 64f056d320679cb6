"""`GET /v1/patients/{patient_id}/fhir?since=&until=&thread_id=`: a session of the
patient's record as a FHIR Bundle (`application/fhir+json`), for the patient's own token
and for clinicians on their care team. A clinician's read is in the access audit trail
before the data goes out; a refusal is in it too."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from uuid import UUID

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.auth import AdminIdentity, ClinicianIdentity, Principal
from gateway.export.fhir import FHIR_JSON, collection
from gateway.export.metrics import FHIR_READS
from gateway.http.rest import BearerAuth, error_response
from protocol.codec import describe
from protocol.frames import ClientTime
from storage.audit import AuditEvent
from storage.care_team import in_force
from storage.database import Database
from storage.pain_reports import reports_between
from storage.summaries import thread_summaries

RecordAccess = Callable[[Sequence[AuditEvent]], Awaitable[None]]


class SessionQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    since: ClientTime | None = None
    until: ClientTime | None = None
    thread_id: UUID | None = None


class FhirRoutes:
    def __init__(self, db: Database, auth: BearerAuth, record_access: RecordAccess) -> None:
        self.db = db
        self.auth = auth
        self.record_access = record_access

    def routes(self) -> list[Route]:
        return [Route("/v1/patients/{patient_id}/fhir", self.bundle, methods=["GET"])]

    async def bundle(self, request: Request) -> Response:
        principal = await self.auth.principal(request)
        if isinstance(principal, JSONResponse):
            return principal
        try:
            patient_id = UUID(request.path_params["patient_id"])
        except ValueError:
            return error_response(422, "invalid", "patient_id: must be a UUID")
        try:
            query = SessionQuery.model_validate(dict(request.query_params))
        except ValidationError as exc:
            return error_response(422, "invalid", describe(exc))
        refusal = await self._refusal(principal, patient_id)
        if refusal is not None:
            self.auth.refused(principal, "GET fhir", patient_id)
            return error_response(403, "forbidden", refusal)
        if isinstance(principal, ClinicianIdentity):
            event = AuditEvent(principal.sub, "clinician", patient_id, "fhir_export", "allowed")
            await self.record_access([event])
        async with self.db.acquire() as conn:
            since, until, thread_id = query.since, query.until, query.thread_id
            reports = await reports_between(
                conn, patient_id, since=since, until=until, thread_id=thread_id
            )
            summaries = await thread_summaries(
                conn, patient_id, since=since, until=until, thread_id=thread_id
            )
        FHIR_READS.labels(principal.role).inc()
        body = collection(patient_id, reports, datetime.now(UTC), summaries)
        return Response(orjson.dumps(body), media_type=FHIR_JSON)

    async def _refusal(self, principal: Principal, patient_id: UUID) -> str | None:
        """Why this caller may not read this patient's record, or None."""
        if isinstance(principal, AdminIdentity):
            return "the FHIR export is for the patient and their care team"
        if isinstance(principal, ClinicianIdentity):
            async with self.db.acquire() as conn:
                granted = await in_force(conn, [(principal.sub, patient_id)])
            return None if granted else "patient_id: not on this patient's care team"
        if principal.patient_id != patient_id:
            return "patient_id: a patient reads only their own record"
        return None
