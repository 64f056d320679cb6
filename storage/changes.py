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
) -> WriteResult:
    """Apply `mutations` in order for one patient; one result per mutation, same order."""
    async with conn.transaction():
        version: int = await conn.fetchval(
            """
            INSERT INTO patients AS p (id) VALUES ($1)
            ON CONFLICT (id) DO UPDATE SET id = p.id
            RETURNING p.sync_version
            """,
            patient_id,
        )
        start_version = version
        seen: dict[str, int] = {}
        if device_id is not None:
            await conn.execute(
                """
                INSERT INTO devices (patient_id, device_id) VALUES ($1, $2)
                ON CONFLICT (patient_id, device_id) DO UPDATE SET last_seen = now()
                """,
                patient_id,
                device_id,
            )
            keys = [m.mutation_id for m in mutations if m.mutation_id is not None]
            if keys:
                rows = await conn.fetch(
                    """
                    SELECT mutation_id, version FROM changes
                    WHERE patient_id = $1 AND device_id = $2 AND mutation_id = ANY($3::text[])
                    """,
                    patient_id,
                    device_id,
                    keys,
                )
                seen = {row["mutation_id"]: row["version"] for row in rows}

        result = WriteResult(version=version)
        for mutation in mutations:
            key = mutation.mutation_id if device_id is not None else None
            if key is not None and key in seen:
                result.results.append(Duplicate(seen[key]))
                continue
            outcome = await _apply_one(conn, patient_id, mutation, device_id)
            if isinstance(outcome, Rejected):
                result.results.append(outcome)
                continue
            version += 1
            # data comes back from the row so that it has the JSON types that readers of
            # the change log see (strings for ids and times).
            row = await conn.fetchrow(
                """
                INSERT INTO changes
                    (patient_id, version, entity, op, entity_id, data, device_id, mutation_id)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                RETURNING data, at
                """,
                patient_id,
                version,
                mutation.entity,
                mutation.op,
                mutation.id,
                outcome,
                device_id,
                key,
            )
            if key is not None:
                seen[key] = version
            assert row is not None
            change = Change(
                version,
                mutation.entity,
                mutation.op,
                mutation.id,
                row["data"],
                device_id,
                key,
                row["at"],
            )
            result.results.append(Applied(change))
        if version != start_version:
            await conn.execute(
                "UPDATE patients SET sync_version = $2 WHERE id = $1", patient_id, version
            )
        result.version = version
        return result


async def _apply_one(
    conn: Connection, patient_id: UUID, m: Mutation, device_id: str | None
) -> dict[str, Any] | None | Rejected:
    """Write one mutation; returns the change's data (the entity's new state, or None
    for a delete), or why it was rejected."""
    if m.entity == "thread":
        if m.op == "delete":
            return await _delete_thread(conn, patient_id, m.id)
        if not isinstance(m.data, ThreadData):
            return Rejected(ErrorCode.INVALID, "data: a thread upsert needs thread data")
        return await _upsert_thread(conn, patient_id, m.id, m.data)
    if m.op == "delete":
        return await _delete_message(conn, patient_id, m.id)
    if not isinstance(m.data, MessageData):
        return Rejected(ErrorCode.INVALID, "data: a message upsert needs message data")
    return await _upsert_message(conn, patient_id, m.id, m.data, device_id)


async def _upsert_thread(
    conn: Connection, patient_id: UUID, thread_id: UUID, data: ThreadData
) -> dict[str, Any] | Rejected:
    row = await conn.fetchrow(
        """
        INSERT INTO threads AS t (id, patient_id, title) VALUES ($1, $2, $3)
        ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title, updated_at = now()
            WHERE t.patient_id = EXCLUDED.patient_id AND NOT t.deleted
        RETURNING title, created_at, updated_at
        """,
        thread_id,
        patient_id,
        data.title,
    )
    if row is None:
        return await _why_thread_unwritable(conn, patient_id, thread_id)
    return {"title": row["title"], "created_at": row["created_at"], "updated_at": row["updated_at"]}


async def _delete_thread(conn: Connection, patient_id: UUID, thread_id: UUID) -> None | Rejected:
    # Deleting a thread deletes its messages and their memories; no separate changes are
    # logged for them, replicas apply the thread's delete to its messages.
    deleted = await conn.fetchval(
        """
        WITH thread AS (
            UPDATE threads SET deleted = true, updated_at = now()
            WHERE id = $1 AND patient_id = $2
            RETURNING id
        ), gone AS (
            UPDATE messages SET deleted = true, updated_at = now()
            WHERE thread_id IN (SELECT id FROM thread) AND NOT deleted
            RETURNING id
        ), forgotten AS (
            DELETE FROM memories WHERE message_id IN (SELECT id FROM gone)
        )
        SELECT count(*) FROM thread
        """,
        thread_id,
        patient_id,
    )
    if deleted == 0:
        owner = await conn.fetchval("SELECT patient_id FROM threads WHERE id = $1", thread_id)
        if owner is None:
            return Rejected(ErrorCode.NOT_FOUND, "id: no such thread")
        return Rejected(ErrorCode.FORBIDDEN, "id: the thread belongs to another patient")
    return None


async def _why_thread_unwritable(conn: Connection, patient_id: UUID, thread_id: UUID) -> Rejected:
    row = await conn.fetchrow("SELECT patient_id, deleted FROM threads WHERE id = $1", thread_id)
    if row is None:
        return Rejected(ErrorCode.NOT_FOUND, "thread_id: no such thread")
    if row["patient_id"] != patient_id:
        return Rejected(ErrorCode.FORBIDDEN, "thread_id: the thread belongs to another patient")
    return Rejected(ErrorCode.CONFLICT, "thread_id: the thread was deleted")


_MESSAGE_COLUMNS = "thread_id, role, content, svg_path, source, device_id, created_at, updated_at"


async def _upsert_message(
    conn: Connection,
    patient_id: UUID,
    message_id: UUID,
    data: MessageData,
    device_id: str | None,
) -> dict[str, Any] | Rejected:
    # Inserted only into a live thread of this patient; an existing message may change its
    # content and body-map path, never its owner, thread or role.
    row = await conn.fetchrow(
        f"""
        INSERT INTO messages AS m
            (id, patient_id, thread_id, role, content, svg_path, source, device_id, created_at)
        SELECT $1, $2, $3, $4, $5, $6, $7, $8, coalesce($9, now())
        WHERE EXISTS (SELECT 1 FROM threads WHERE id = $3 AND patient_id = $2 AND NOT deleted)
        ON CONFLICT (id) DO UPDATE
            SET content = EXCLUDED.content, svg_path = EXCLUDED.svg_path, updated_at = now()
            WHERE m.patient_id = EXCLUDED.patient_id AND m.thread_id = EXCLUDED.thread_id
              AND m.role = EXCLUDED.role AND NOT m.deleted
        RETURNING {_MESSAGE_COLUMNS}
        """,
        message_id,
        patient_id,
        data.thread_id,
        data.role,
        data.content,
        data.svg_path,
        data.source,
        device_id,
        data.created_at,
    )
    if row is not None:
        return dict(row)
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


async def _delete_message(conn: Connection, patient_id: UUID, message_id: UUID) -> None | Rejected:
    deleted = await conn.fetchval(
        """
        WITH gone AS (
            UPDATE messages SET deleted = true, updated_at = now()
            WHERE id = $1 AND patient_id = $2
            RETURNING id
        ), forgotten AS (
            DELETE FROM memories WHERE message_id IN (SELECT id FROM gone)
        )
        SELECT count(*) FROM gone
        """,
        message_id,
        patient_id,
    )
    if deleted == 0:
        owner = await conn.fetchval("SELECT patient_id FROM messages WHERE id = $1", message_id)
        if owner is None:
            return Rejected(ErrorCode.NOT_FOUND, "id: no such message")
        return Rejected(ErrorCode.FORBIDDEN, "id: the message belongs to another patient")
    return None


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
