"""The queue of pain reports waiting to be sent to the FHIR server (sql/0011): filled by
every pain report write in the same transaction, emptied by the export worker.

A worker claims due rows with a lease (SKIP LOCKED: workers of several processes never
take the same row) together with each report's state now, sends them without holding a
connection, and takes a row off only if its revision is still the one it sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from storage.database import Connection
from storage.pain_reports import PainReport, exported_report


@dataclass(frozen=True)
class Due:
    report_id: UUID
    patient_id: UUID
    revision: int
    attempts: int
    report: PainReport | None  # None: deleted (or erased) since; delete it there too


async def claim(conn: Connection, limit: int, lease_s: float) -> list[Due]:
    """Up to `limit` due rows, leased for `lease_s`, oldest first."""
    rows = await conn.fetch(
        """
        WITH due AS (
            SELECT report_id FROM fhir_outbox
            WHERE not_before <= now()
            ORDER BY not_before
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        ), leased AS (
            UPDATE fhir_outbox q
            SET not_before = now() + make_interval(secs => $2), attempts = q.attempts + 1
            FROM due WHERE q.report_id = due.report_id
            RETURNING q.report_id, q.patient_id, q.revision, q.attempts
        )
        SELECT l.report_id, l.patient_id, l.revision, l.attempts, pr.deleted,
               pr.id, pr.intensity, pr.recorded_at, pr.region, pr.svg_path, pr.qualities,
               pr.note, pr.onset_at, pr.thread_id, pr.updated_at
        FROM leased l JOIN pain_reports pr ON pr.id = l.report_id
        """,
        limit,
        lease_s,
    )
    return [
        Due(
            r["report_id"],
            r["patient_id"],
            r["revision"],
            r["attempts"],
            None if r["deleted"] else exported_report(r),
        )
        for r in rows
    ]


async def sent(conn: Connection, due: list[Due]) -> int:
    """The server took them: off the queue, unless written again since. How many went."""
    status: str = await conn.execute(
        """
        DELETE FROM fhir_outbox q
        USING unnest($1::uuid[], $2::bigint[]) AS s (report_id, revision)
        WHERE q.report_id = s.report_id AND q.revision = s.revision
        """,
        [d.report_id for d in due],
        [d.revision for d in due],
    )
    return int(status.rsplit(" ", 1)[-1])


async def back_off(conn: Connection, due: list[Due], delay_s: float, error: str) -> None:
    """Sending failed: due again after `delay_s`, the reason kept (no patient data)."""
    await conn.execute(
        """
        UPDATE fhir_outbox SET not_before = now() + make_interval(secs => $2), last_error = $3
        WHERE report_id = ANY($1::uuid[])
        """,
        [d.report_id for d in due],
        delay_s,
        error,
    )


async def depth(conn: Connection) -> int:
    count: int = await conn.fetchval("SELECT count(*) FROM fhir_outbox")
    return count
