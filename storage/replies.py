"""What the chat pipeline reads and holds around a reply: the per-thread lease that lets
one reply stream at a time (across every gateway process), the thread's recent turns,
and what a replayed chat.send finds of its message.

A lease, not a lock held for the reply's length: it expires by itself when the process
holding it dies, and the holder renews it while the reply streams.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from uuid import UUID

from storage.database import Connection

ThreadState = Literal["mine", "missing", "other_patient", "deleted"]


@dataclass(frozen=True)
class Claim:
    granted: bool
    thread: ThreadState
    at_limit: bool = False  # refused: the patient has `max_live` replies streaming elsewhere


@dataclass(frozen=True)
class StoredTurn:
    id: UUID
    role: str
    content: str


async def claim_reply(
    conn: Connection,
    patient_id: UUID,
    thread_id: UUID,
    response_id: UUID,
    lease_s: float,
    max_live: int = 1_000_000,
) -> Claim:
    """Take the thread's reply lease for `response_id` unless a live one is held or the
    patient has `max_live` replies streaming in other threads, and say whose thread it
    is. One round trip. (Two claims at the same moment may both pass the count: the cap
    bounds a flood, it is not exact.)"""
    row = await conn.fetchrow(
        """
        WITH live AS (
            SELECT count(*) AS n FROM reply_leases
            WHERE patient_id = $1 AND thread_id <> $2 AND expires_at > now()
        ), lease AS (
            INSERT INTO reply_leases AS l (patient_id, thread_id, response_id, expires_at)
            SELECT $1, $2, $3, now() + make_interval(secs => $4) FROM live WHERE live.n < $5
            ON CONFLICT (patient_id, thread_id) DO UPDATE
                SET response_id = EXCLUDED.response_id, expires_at = EXCLUDED.expires_at
                WHERE l.expires_at < now()
            RETURNING 1
        )
        SELECT EXISTS (SELECT 1 FROM lease) AS granted, (SELECT n FROM live) >= $5 AS at_limit,
               t.patient_id, t.deleted
        FROM (SELECT 1) one LEFT JOIN threads t ON t.id = $2
        """,
        patient_id,
        thread_id,
        response_id,
        lease_s,
        max_live,
    )
    assert row is not None
    thread: ThreadState
    if row["patient_id"] is None:
        thread = "missing"
    elif row["patient_id"] != patient_id:
        thread = "other_patient"
    elif row["deleted"]:
        thread = "deleted"
    else:
        thread = "mine"
    return Claim(granted=row["granted"], thread=thread, at_limit=row["at_limit"])


async def renew_reply(conn: Connection, response_id: UUID, lease_s: float) -> None:
    await conn.execute(
        "UPDATE reply_leases SET expires_at = now() + make_interval(secs => $2) "
        "WHERE response_id = $1",
        response_id,
        lease_s,
    )


async def release_reply(conn: Connection, response_id: UUID) -> None:
    await conn.execute("DELETE FROM reply_leases WHERE response_id = $1", response_id)


async def streaming_replies(conn: Connection, patient_id: UUID) -> list[UUID]:
    """The response ids of the patient's replies streaming now, on any process."""
    rows = await conn.fetch(
        "SELECT response_id FROM reply_leases WHERE patient_id = $1 AND expires_at > now()",
        patient_id,
    )
    return [row["response_id"] for row in rows]


async def ready_states(
    conn: Connection, patient_ids: Sequence[UUID]
) -> dict[UUID, tuple[int, list[UUID]]]:
    """What `session.ready` needs for each patient, in one round trip for all of them:
    the latest sync version and the response ids of the replies streaming now."""
    rows = await conn.fetch(
        """
        SELECT p.id, coalesce(patients.sync_version, 0) AS version,
               ARRAY(SELECT response_id FROM reply_leases
                     WHERE patient_id = p.id AND expires_at > now()) AS streaming
        FROM unnest($1::uuid[]) AS p(id)
        LEFT JOIN patients ON patients.id = p.id
        """,
        list(patient_ids),
    )
    return {row["id"]: (int(row["version"]), list(row["streaming"])) for row in rows}


async def recent_turns(
    conn: Connection, thread_id: UUID, *, before: UUID, limit: int = 20
) -> list[StoredTurn]:
    """The thread's last `limit` non-empty messages before message `before`, oldest first."""
    rows = await conn.fetch(
        """
        SELECT id, role, content FROM (
            SELECT id, role, content, created_at FROM messages
            WHERE thread_id = $1 AND NOT deleted AND id <> $2 AND content <> ''
              AND created_at <= (SELECT created_at FROM messages WHERE id = $2)
            ORDER BY created_at DESC LIMIT $3
        ) recent ORDER BY created_at
        """,
        thread_id,
        before,
        limit,
    )
    return [StoredTurn(r["id"], r["role"], r["content"]) for r in rows]


@dataclass(frozen=True)
class SentMessage:
    """A user message an earlier chat.send stored, as a replay of that send finds it."""

    created_at: datetime
    deleted: bool
    answered: bool  # it has a reply that ended normally: a replay asks for nothing more


async def sent_message(conn: Connection, patient_id: UUID, message_id: UUID) -> SentMessage | None:
    """The patient's user message `message_id`, or None if there is none."""
    row = await conn.fetchrow(
        """
        SELECT m.created_at, m.deleted, EXISTS (
            SELECT 1 FROM messages r
            WHERE r.reply_to = m.id AND NOT r.deleted AND r.finish_reason IN ('stop', 'length')
        ) AS answered
        FROM messages m
        WHERE m.id = $1 AND m.patient_id = $2 AND m.role = 'user'
        """,
        message_id,
        patient_id,
    )
    if row is None:
        return None
    return SentMessage(row["created_at"], row["deleted"], row["answered"])
