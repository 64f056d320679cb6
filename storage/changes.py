"""The change log: the one way threads and messages are written.

`apply_mutations` applies a batch of one patient's mutations and appends one change per
applied mutation, numbered with the patient's next versions, in one transaction. The
patient's row is locked first, which serialises that patient's writers (other patients
are not affected): versions start at 1 and rise by exactly 1, and a rolled-back write
leaves no gap. A mutation whose `(device_id, mutation_id)` was applied before is reported
as a duplicate and changes nothing.

A rejected mutation writes nothing: each write statement either applies fully or
matches no row, and only then are read-only queries run to name the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import asyncpg

from protocol.codes import ErrorCode
from storage.database import Connection

Entity = Literal["thread", "message"]
Op = Literal["upsert", "delete"]
Role = Literal["user", "assistant"]
Source = Literal["text", "voice", "sync"]


@dataclass(frozen=True)
class ThreadData:
    title: str = ""


@dataclass(frozen=True)
class MessageData:
    thread_id: UUID
    role: Role
    content: str
    svg_path: str | None = None
    source: Source = "sync"
    created_at: datetime | None = None


@dataclass(frozen=True)
class Mutation:
    entity: Entity
    op: Op
    id: UUID
    data: ThreadData | MessageData | None = None
    # With the writer's device id, the idempotency key. None for server-side writes.
    mutation_id: str | None = None


@dataclass(frozen=True)
class Change:
    """One row of the change log, as devices receive it."""

    version: int
    entity: Entity
    op: Op
    id: UUID
    data: dict[str, Any] | None
    device_id: str | None
    mutation_id: str | None
    at: datetime


@dataclass(frozen=True)
class Applied:
    change: Change


@dataclass(frozen=True)
class Duplicate:
    version: int  # the version the first application received


@dataclass(frozen=True)
class Rejected:
    code: ErrorCode
    message: str


MutationResult = Applied | Duplicate | Rejected


@dataclass
class WriteResult:
    version: int  # the patient's latest version after this write
    results: list[MutationResult] = field(default_factory=list)

    @property
    def changes(self) -> list[Change]:
        return [r.change for r in self.results if isinstance(r, Applied)]


async def apply_mutations(
    conn: Connection,
    patient_id: UUID,
    mutations: Sequence[Mutation],
    *,
    device_id: str | None = None,
    hold_until_release: bool = False,
) -> WriteResult:
    """Apply `mutations` in order for one patient; one result per mutation, same order.

    Round trips: one to lock the patient (and note the device and which mutation ids it
    already applied), then one per mutation — the write, its change row and the version
    bump are a single statement.

    With `hold_until_release`, the patient's writers stay serialised past the commit: a
    session-level advisory lock on the patient is taken first and released only when the
    connection goes back to the pool (the pool's reset runs `pg_advisory_unlock_all()`,
    and a connection whose reset fails is closed). What the caller does after the commit
    — publishing the changes — then happens in version order across processes.
    """
    keys = [m.mutation_id for m in mutations if m.mutation_id is not None]
    async with conn.transaction():
        prelude = await conn.fetchrow(
            """
            WITH l AS MATERIALIZED (
                SELECT CASE WHEN $4::bigint IS NULL THEN NULL
                            ELSE pg_advisory_lock($4::bigint) END AS held
            ), p AS (
                -- FROM l: the advisory lock is taken before the patient's row lock.
                INSERT INTO patients AS p (id) SELECT $1 FROM l
                ON CONFLICT (id) DO UPDATE SET id = p.id
                RETURNING p.sync_version
            ), d AS (
                INSERT INTO devices (patient_id, device_id)
                SELECT $1, $2::text FROM p WHERE $2::text IS NOT NULL
                ON CONFLICT (patient_id, device_id) DO UPDATE SET last_seen = now()
            )
            SELECT (SELECT sync_version FROM p) AS version,
                   array(SELECT mutation_id FROM changes
                         WHERE patient_id = $1 AND device_id = $2::text
                           AND mutation_id = ANY($3::text[]) ORDER BY version) AS keys,
                   array(SELECT version FROM changes
                         WHERE patient_id = $1 AND device_id = $2::text
                           AND mutation_id = ANY($3::text[]) ORDER BY version) AS versions
            """,
            patient_id,
            device_id,
            keys if device_id is not None else [],
            patient_lock_key(patient_id) if hold_until_release else None,
        )
        assert prelude is not None
        version: int = prelude["version"]
        seen: dict[str, int] = dict(zip(prelude["keys"], prelude["versions"], strict=True))
        result = WriteResult(version=version)
        for mutation in mutations:
            key = mutation.mutation_id if device_id is not None else None
            if key is not None and key in seen:
                result.results.append(Duplicate(seen[key]))
                continue
            log = (
                patient_id,
                version + 1,
                mutation.entity,
                mutation.op,
                mutation.id,
                device_id,
                key,
            )
            outcome = await _apply_one(conn, log, mutation)
            if isinstance(outcome, Rejected):
                result.results.append(outcome)
                continue
            version += 1
            if key is not None:
                seen[key] = version
            change = Change(
                version,
                mutation.entity,
                mutation.op,
                mutation.id,
                outcome["data"],
                device_id,
                key,
                outcome["at"],
            )
            result.results.append(Applied(change))
        result.version = version
        return result


# Appended to each write, whose rows are the CTE `w`: the change row (with the entity's
# new state as data) and the patient's version, in the same statement. $1-$7 are the
# change's patient, version, entity, op, entity id, device and mutation id; the write's
# own parameters start at $8. Nothing is logged when `w` matched no row.
_LOGGED = """
, c AS (
    INSERT INTO changes
        (patient_id, version, entity, op, entity_id, data, device_id, mutation_id)
    SELECT $1, $2, $3, $4, $5, {data}, $6, $7 FROM w
    RETURNING data, at
), v AS (
    UPDATE patients SET sync_version = $2 WHERE id = $1 AND EXISTS (SELECT 1 FROM c)
)
SELECT data, at FROM c
"""
_UPSERTED = _LOGGED.format(data="to_jsonb(w)")
_DELETED = _LOGGED.format(data="NULL::jsonb")

Log = tuple[UUID, int, str, str, UUID, str | None, str | None]
Written = asyncpg.Record


async def _apply_one(conn: Connection, log: Log, m: Mutation) -> Written | Rejected:
    """Write one mutation with its change row; the row's data and time, or why not."""
    patient_id = log[0]
    if m.entity == "thread":
        if m.op == "delete":
            return await _delete_thread(conn, log, m.id)
        if not isinstance(m.data, ThreadData):
            return Rejected(ErrorCode.INVALID, "data: a thread upsert needs thread data")
        return await _upsert_thread(conn, log, m.id, m.data)
    if m.op == "delete":
        return await _delete_message(conn, log, m.id)
    if not isinstance(m.data, MessageData):
        return Rejected(ErrorCode.INVALID, "data: a message upsert needs message data")
    return await _upsert_message(conn, log, patient_id, m.id, m.data)


async def _upsert_thread(
    conn: Connection, log: Log, thread_id: UUID, data: ThreadData
) -> Written | Rejected:
    row = await conn.fetchrow(
        """
        WITH w AS (
            INSERT INTO threads AS t (id, patient_id, title) VALUES ($8, $1, $9)
            ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title, updated_at = now()
                WHERE t.patient_id = EXCLUDED.patient_id AND NOT t.deleted
            RETURNING title, created_at, updated_at
        )"""
        + _UPSERTED,
        *log,
        thread_id,
        data.title,
    )
    if row is None:
        return await _why_thread_unwritable(conn, log[0], thread_id)
    return row


async def _delete_thread(conn: Connection, log: Log, thread_id: UUID) -> Written | Rejected:
    # Deleting a thread deletes its messages and their memories; no separate changes are
    # logged for them, replicas apply the thread's delete to its messages.
    row = await conn.fetchrow(
        """
        WITH w AS (
            UPDATE threads SET deleted = true, updated_at = now()
            WHERE id = $8 AND patient_id = $1
            RETURNING id
        ), gone AS (
            UPDATE messages SET deleted = true, updated_at = now()
            WHERE thread_id IN (SELECT id FROM w) AND NOT deleted
            RETURNING id
        ), forgotten AS (
            DELETE FROM memories WHERE message_id IN (SELECT id FROM gone)
        )"""
        + _DELETED,
        *log,
        thread_id,
    )
    if row is None:
        owner = await conn.fetchval("SELECT patient_id FROM threads WHERE id = $1", thread_id)
        if owner is None:
            return Rejected(ErrorCode.NOT_FOUND, "id: no such thread")
        return Rejected(ErrorCode.FORBIDDEN, "id: the thread belongs to another patient")
    return row


async def _why_thread_unwritable(conn: Connection, patient_id: UUID, thread_id: UUID) -> Rejected:
    row = await conn.fetchrow("SELECT patient_id, deleted FROM threads WHERE id = $1", thread_id)
    if row is None:
        return Rejected(ErrorCode.NOT_FOUND, "thread_id: no such thread")
    if row["patient_id"] != patient_id:
        return Rejected(ErrorCode.FORBIDDEN, "thread_id: the thread belongs to another patient")
    return Rejected(ErrorCode.CONFLICT, "thread_id: the thread was deleted")


async def _upsert_message(
    conn: Connection, log: Log, patient_id: UUID, message_id: UUID, data: MessageData
) -> Written | Rejected:
    # Inserted only into a live thread of this patient; an existing message may change its
    # content and body-map path, never its owner, thread or role.
    row = await conn.fetchrow(
        """
        WITH w AS (
            INSERT INTO messages AS m
                (id, patient_id, thread_id, role, content, svg_path, source, device_id,
                 created_at)
            SELECT $8, $1, $9, $10, $11, $12, $13, $6, coalesce($14, now())
            WHERE EXISTS (SELECT 1 FROM threads WHERE id = $9 AND patient_id = $1 AND NOT deleted)
            ON CONFLICT (id) DO UPDATE
                SET content = EXCLUDED.content, svg_path = EXCLUDED.svg_path, updated_at = now()
                WHERE m.patient_id = EXCLUDED.patient_id AND m.thread_id = EXCLUDED.thread_id
                  AND m.role = EXCLUDED.role AND NOT m.deleted
            RETURNING thread_id, role, content, svg_path, source, device_id, created_at,
                      updated_at
        )"""
        + _UPSERTED,
        *log,
        message_id,
        data.thread_id,
        data.role,
        data.content,
        data.svg_path,
        data.source,
        data.created_at,
    )
    if row is not None:
        return row
    existing = await conn.fetchrow(
        "SELECT patient_id, thread_id, role, deleted FROM messages WHERE id = $1", message_id
    )
    if existing is None:
        return await _why_thread_unwritable(conn, patient_id, data.thread_id)
    if existing["patient_id"] != patient_id:
        return Rejected(ErrorCode.FORBIDDEN, "id: the message belongs to another patient")
    if existing["deleted"]:
        return Rejected(ErrorCode.CONFLICT, "id: the message was deleted")
    if existing["thread_id"] != data.thread_id:
        return Rejected(ErrorCode.CONFLICT, "thread_id: the message belongs to another thread")
    if existing["role"] != data.role:
        return Rejected(ErrorCode.CONFLICT, "role: a message's role cannot change")
    return await _why_thread_unwritable(conn, patient_id, data.thread_id)


async def _delete_message(conn: Connection, log: Log, message_id: UUID) -> Written | Rejected:
    row = await conn.fetchrow(
        """
        WITH w AS (
            UPDATE messages SET deleted = true, updated_at = now()
            WHERE id = $8 AND patient_id = $1
            RETURNING id
        ), forgotten AS (
            DELETE FROM memories WHERE message_id IN (SELECT id FROM w)
        )"""
        + _DELETED,
        *log,
        message_id,
    )
    if row is None:
        owner = await conn.fetchval("SELECT patient_id FROM messages WHERE id = $1", message_id)
        if owner is None:
            return Rejected(ErrorCode.NOT_FOUND, "id: no such message")
        return Rejected(ErrorCode.FORBIDDEN, "id: the message belongs to another patient")
    return row


def patient_lock_key(patient_id: UUID) -> int:
    """The patient's advisory lock key (a signed 64-bit slice of the id)."""
    return int.from_bytes(patient_id.bytes[:8], "big", signed=True)


async def current_version(conn: Connection, patient_id: UUID) -> int:
    version = await conn.fetchval("SELECT sync_version FROM patients WHERE id = $1", patient_id)
    return int(version or 0)


async def changes_since(
    conn: Connection, patient_id: UUID, since: int, limit: int
) -> tuple[list[Change], bool]:
    """The patient's changes with version > `since`, oldest first, at most `limit`;
    the flag says whether more follow. One range scan of the change log's key."""
    rows = await conn.fetch(
        """
        SELECT version, entity, op, entity_id, data, device_id, mutation_id, at
        FROM changes WHERE patient_id = $1 AND version > $2
        ORDER BY version LIMIT $3
        """,
        patient_id,
        since,
        limit + 1,
    )
    changes = [
        Change(
            r["version"],
            r["entity"],
            r["op"],
            r["entity_id"],
            r["data"],
            r["device_id"],
            r["mutation_id"],
            r["at"],
        )
        for r in rows[:limit]
    ]
    return changes, len(rows) > limit
