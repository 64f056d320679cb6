"""Managing care teams and reading the audit trail (the admin API and the command line):
every grant and revoke is itself audited."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from storage import audit, care_team
from storage.audit import AuditEvent, AuditPage, Outcome
from storage.care_team import Grant
from storage.database import Database


class CareTeams:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def grant(
        self,
        admin_id: UUID,
        clinician_id: UUID,
        patient_id: UUID,
        expires_at: datetime | None = None,
    ) -> Grant:
        async with self.db.acquire() as conn:
            async with conn.transaction():
                granted = await care_team.grant(
                    conn, clinician_id, patient_id, granted_by=admin_id, expires_at=expires_at
                )
                reason = f"clinician {clinician_id}"
                if expires_at is not None:
                    reason += f" until {expires_at.isoformat()}"
                await audit.record(
                    conn, [AuditEvent(admin_id, "admin", patient_id, "grant", "allowed", reason)]
                )
        return granted

    async def revoke(self, admin_id: UUID, clinician_id: UUID, patient_id: UUID) -> bool:
        async with self.db.acquire() as conn:
            async with conn.transaction():
                revoked = await care_team.revoke(conn, clinician_id, patient_id)
                outcome: Outcome = "allowed" if revoked else "denied"
                reason = f"clinician {clinician_id}" + ("" if revoked else ": no such grant")
                await audit.record(
                    conn, [AuditEvent(admin_id, "admin", patient_id, "revoke", outcome, reason)]
                )
        return revoked

    async def grants(
        self, *, patient_id: UUID | None = None, clinician_id: UUID | None = None
    ) -> list[Grant]:
        async with self.db.acquire() as conn:
            return await care_team.grants(conn, patient_id=patient_id, clinician_id=clinician_id)

    async def trail(
        self, patient_id: UUID, *, since: datetime | None, after_id: int, limit: int
    ) -> AuditPage:
        async with self.db.acquire() as conn:
            return await audit.events(conn, patient_id, since=since, after_id=after_id, limit=limit)
