"""Care teams: which clinicians may observe which patients, until when.

A grant is a row; revoking deletes it. A grant past its `expires_at` counts as absent
everywhere it is read, so an expiry needs no job to take effect.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from storage.database import Connection

CLI_GRANTER = UUID(int=0)  # granted_by for grants made with the command line


@dataclass(frozen=True)
class Grant:
    clinician_id: UUID
    patient_id: UUID
    granted_by: UUID
    granted_at: datetime
    expires_at: datetime | None


_COLUMNS = "clinician_id, patient_id, granted_by, granted_at, expires_at"


async def grant(
    conn: Connection,
    clinician_id: UUID,
    patient_id: UUID,
    *,
    granted_by: UUID,
    expires_at: datetime | None = None,
) -> Grant:
    """Add the clinician to the patient's care team (or renew the grant)."""
    row = await conn.fetchrow(
        f"""
        INSERT INTO care_team AS c (clinician_id, patient_id, granted_by, expires_at)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT (clinician_id, patient_id) DO UPDATE
            SET granted_by = EXCLUDED.granted_by, granted_at = now(),
                expires_at = EXCLUDED.expires_at
        RETURNING {_COLUMNS}
        """,
        clinician_id,
        patient_id,
        granted_by,
        expires_at,
    )
    assert row is not None
    return Grant(**dict(row))


async def revoke(conn: Connection, clinician_id: UUID, patient_id: UUID) -> bool:
    """Remove the grant; whether there was one."""
    status: str = await conn.execute(
        "DELETE FROM care_team WHERE clinician_id = $1 AND patient_id = $2",
        clinician_id,
        patient_id,
    )
    return status != "DELETE 0"


async def grants(
    conn: Connection, *, patient_id: UUID | None = None, clinician_id: UUID | None = None
) -> list[Grant]:
    """Grants in force (not expired), of one patient, one clinician, or all."""
    rows = await conn.fetch(
        f"""
        SELECT {_COLUMNS} FROM care_team
        WHERE ($1::uuid IS NULL OR patient_id = $1)
          AND ($2::uuid IS NULL OR clinician_id = $2)
          AND (expires_at IS NULL OR expires_at > now())
        ORDER BY patient_id, granted_at
        """,
        patient_id,
        clinician_id,
    )
    return [Grant(**dict(row)) for row in rows]


async def in_force(conn: Connection, pairs: list[tuple[UUID, UUID]]) -> set[tuple[UUID, UUID]]:
    """Which of these (clinician, patient) pairs have a grant in force now: one query for
    any number of pairs."""
    if not pairs:
        return set()
    rows = await conn.fetch(
        """
        SELECT c.clinician_id, c.patient_id
        FROM unnest($1::uuid[], $2::uuid[]) AS p (clinician_id, patient_id)
        JOIN care_team c USING (clinician_id, patient_id)
        WHERE c.expires_at IS NULL OR c.expires_at > now()
        """,
        [clinician for clinician, _ in pairs],
        [patient for _, patient in pairs],
    )
    return {(row["clinician_id"], row["patient_id"]) for row in rows}
