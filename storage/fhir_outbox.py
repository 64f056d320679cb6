"""The queue of resources waiting to be sent to the FHIR server (sql/0011, sql/0013):
filled in the same transaction by every pain report write (its Observation) and every
change of a thread's summary (its DocumentReference), emptied by the export worker.

A worker claims due rows with a lease (SKIP LOCKED: workers of several processes never
take the same row) together with each resource's state now, sends them without holding a
connection, and takes a row off only if its revision is still the one it sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from uuid import UUID

from storage.database import Connection
from storage.pain_reports import PainReport, exported_report
from storage.summaries import ThreadSummary

Resource = Literal["Observation", "DocumentReference"]


@dataclass(frozen=True)
class Due:
    resource: Resource
    resource_id: UUID
    patient_id: UUID
    revision: int
    attempts: int
    # Its state now; both None: gone (deleted, erased, a summary dropped): delete it there.
    report: PainReport | None = None
    summary: ThreadSummary | None = None


async def claim(conn: Connection, limit: int, lease_s: float) -> list[Due]:
    """Up to `limit` due rows, leased for `lease_s`, oldest first."""
    rows = await conn.fetch(
        """
        WITH due AS (
            SELECT resource, resource_id FROM fhir_outbox
            WHERE not_before <= now()
            ORDER BY not_before
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        ), leased AS (
            UPDATE fhir_outbox q
            SET not_before = now() + make_interval(secs => $2), attempts = q.attempts + 1
            FROM due WHERE (q.resource, q.resource_id) = (due.resource, due.resource_id)
            RETURNING q.resource, q.resource_id, q.patient_id, q.revision, q.attempts
        )
        SELECT l.resource, l.resource_id, l.patient_id, l.revision, l.attempts,
               pr.deleted AS report_deleted, pr.id, pr.intensity, pr.recorded_at, pr.region,
               pr.svg_path, pr.qualities, pr.note, pr.onset_at, pr.thread_id, pr.updated_at,
               t.title, t.summary, t.summarized_at
        FROM leased l
        LEFT JOIN pain_reports pr ON l.resource = 'Observation' AND pr.id = l.resource_id
        LEFT JOIN threads t
            ON l.resource = 'DocumentReference' AND t.id = l.resource_id
            AND NOT t.deleted AND t.summary IS NOT NULL
        """,
        limit,
        lease_s,
    )
    due = []
    for r in rows:
        report = summary = None
        if r["resource"] == "Observation" and r["id"] is not None and not r["report_deleted"]:
            report = exported_report(r)
        if r["resource"] == "DocumentReference" and r["summary"] is not None:
            summary = ThreadSummary(r["resource_id"], r["title"], r["summary"], r["summarized_at"])
        due.append(
            Due(
                r["resource"],
                r["resource_id"],
                r["patient_id"],
                r["revision"],
                r["attempts"],
                report,
                summary,
            )
        )
    return due


async def sent(conn: Connection, due: list[Due]) -> int:
    """The server took them: off the queue, unless written again since. How many went."""
    status: str = await conn.execute(
        """
        DELETE FROM fhir_outbox q
        USING unnest($1::text[], $2::uuid[], $3::bigint[]) AS s (resource, resource_id, revision)
        WHERE (q.resource, q.resource_id, q.revision) = (s.resource, s.resource_id, s.revision)
        """,
        [d.resource for d in due],
        [d.resource_id for d in due],
        [d.revision for d in due],
    )
    return int(status.rsplit(" ", 1)[-1])


async def back_off(conn: Connection, due: list[Due], delay_s: float, error: str) -> None:
    """Sending failed: due again after `delay_s`, the reason kept (no patient data)."""
    await conn.execute(
        """
        UPDATE fhir_outbox q SET not_before = now() + make_interval(secs => $3), last_error = $4
        FROM unnest($1::text[], $2::uuid[]) AS s (resource, resource_id)
        WHERE (q.resource, q.resource_id) = (s.resource, s.resource_id)
        """,
        [d.resource for d in due],
        [d.resource_id for d in due],
        delay_s,
        error,
    )


async def depth(conn: Connection) -> int:
    count: int = await conn.fetchval("SELECT count(*) FROM fhir_outbox")
    return count
