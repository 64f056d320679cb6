"""The durable queue of messages waiting for their embedding (sql/0006): filled by every
message write in the same transaction, emptied by the workers.

A worker claims due rows with a lease (SKIP LOCKED: workers of several processes never
take the same row), embeds them without holding a connection, and stores each memory
only if the message still has the text it embedded, which also takes the row off the
queue. A worker that dies leaves its rows to the next one when the lease runs out.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from storage.database import Connection


@dataclass(frozen=True)
class Due:
    message_id: UUID
    patient_id: UUID
    content: str
    attempts: int


async def claim(conn: Connection, limit: int, lease_s: float) -> list[Due]:
    """Up to `limit` due rows, leased for `lease_s`, oldest first."""
    rows = await conn.fetch(
        """
        WITH due AS (
            SELECT message_id FROM embedding_queue
            WHERE not_before <= now()
            ORDER BY not_before
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        )
        UPDATE embedding_queue q
        SET not_before = now() + make_interval(secs => $2), attempts = q.attempts + 1
        FROM due, messages ms
        WHERE q.message_id = due.message_id AND ms.id = q.message_id
        RETURNING q.message_id, q.patient_id, ms.content, q.attempts
        """,
        limit,
        lease_s,
    )
    return [Due(r["message_id"], r["patient_id"], r["content"], r["attempts"]) for r in rows]


async def back_off(conn: Connection, message_ids: list[UUID], delays_s: list[float]) -> None:
    """The embedding failed: due again after each row's delay."""
    await conn.execute(
        """
        UPDATE embedding_queue q SET not_before = now() + make_interval(secs => d.delay)
        FROM unnest($1::uuid[], $2::float8[]) AS d (message_id, delay)
        WHERE q.message_id = d.message_id
        """,
        message_ids,
        delays_s,
    )


async def depth(conn: Connection) -> int:
    count: int = await conn.fetchval("SELECT count(*) FROM embedding_queue")
    return count


async def enqueue_all(conn: Connection, patient_id: UUID | None = None) -> int:
    """Queue every live message (of one patient, or of all) again: after changing the
    embedding model, or to backfill. How many were queued."""
    status: str = await conn.execute(
        """
        INSERT INTO embedding_queue AS q (message_id, patient_id, content_sha, not_before)
        SELECT ms.id, ms.patient_id, sha256(convert_to(ms.content, 'UTF8')), now()
        FROM messages ms
        WHERE NOT ms.deleted AND ms.content <> '' AND ($1::uuid IS NULL OR ms.patient_id = $1)
        ON CONFLICT (message_id) DO UPDATE
            SET content_sha = EXCLUDED.content_sha, not_before = now(), attempts = 0
        """,
        patient_id,
    )
    return int(status.rsplit(" ", 1)[-1])
