"""Erasing a patient: what `painar-gateway erase --patient` does after deleting the
patient's threads and pain reports through the change log (which devices hear of as
usual).

The rows stay as tombstones (ids and deleted flags: a replayed write of an erased id is
refused, not re-created) and the change log keeps its versions (each row reads as a
delete without data), so devices converge; no row keeps the patient's words, body-map
regions, titles, pain reports or vectors (their memory graph, if any, is dropped). The access audit
trail stays: it holds who looked, not what they saw, and its retention is a legal duty
of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from storage import memory_graphs
from storage.database import Connection


@dataclass(frozen=True)
class Erased:
    messages: int
    threads: int
    changes: int
    memories: int


async def live_threads(conn: Connection, patient_id: UUID) -> list[UUID]:
    rows = await conn.fetch(
        "SELECT id FROM threads WHERE patient_id = $1 AND NOT deleted ORDER BY created_at",
        patient_id,
    )
    return [row["id"] for row in rows]


async def live_pain_reports(conn: Connection, patient_id: UUID) -> list[UUID]:
    rows = await conn.fetch(
        "SELECT id FROM pain_reports WHERE patient_id = $1 AND NOT deleted ORDER BY created_at",
        patient_id,
    )
    return [row["id"] for row in rows]


async def erase_remains(conn: Connection, patient_id: UUID) -> Erased:
    """Blank whatever of the patient still holds content once its threads are deleted
    (rows deleted before erasure existed, messages outside any live thread)."""
    async with conn.transaction():
        messages = await conn.execute(
            """
            UPDATE messages SET deleted = true, content = '', svg_path = NULL
            WHERE patient_id = $1 AND (NOT deleted OR content <> '' OR svg_path IS NOT NULL)
            """,
            patient_id,
        )
        threads = await conn.execute(
            "UPDATE threads SET deleted = true, title = '', summary = NULL "
            "WHERE patient_id = $1 AND (NOT deleted OR title <> '' OR summary IS NOT NULL)",
            patient_id,
        )
        changes = await conn.execute(
            "UPDATE changes SET op = 'delete', data = NULL "
            "WHERE patient_id = $1 AND data IS NOT NULL",
            patient_id,
        )
        # Blanked by their delete trigger (sql/0010), as any deleted pain report is.
        await conn.execute(
            "UPDATE pain_reports SET deleted = true WHERE patient_id = $1 AND NOT deleted",
            patient_id,
        )
        memories = await conn.execute("DELETE FROM memories WHERE patient_id = $1", patient_id)
        await conn.execute("DELETE FROM summary_memories WHERE patient_id = $1", patient_id)
        await memory_graphs.drop(conn, patient_id)
        await conn.execute("DELETE FROM embedding_queue WHERE patient_id = $1", patient_id)
        await conn.execute("DELETE FROM reply_leases WHERE patient_id = $1", patient_id)
    return Erased(*(_count(status) for status in (messages, threads, changes, memories)))


def _count(status: str) -> int:
    """The row count of a command status such as `UPDATE 3`."""
    return int(status.rsplit(" ", 1)[-1])
