"""Where a watcher starts: the patient's sync version and the latest messages of their most
recently active thread, read consistently."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from storage.changes import current_version
from storage.database import Connection


@dataclass(frozen=True)
class Snapshot:
    version: int
    thread_id: UUID | None
    messages: list[dict[str, Any]] = field(default_factory=list)  # oldest first


async def snapshot(conn: Connection, patient_id: UUID, limit: int) -> Snapshot:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        version = await current_version(conn, patient_id)
        # The thread with the latest message (or, without messages, the latest write).
        thread_id = await conn.fetchval(
            """
            SELECT t.id FROM threads t
            LEFT JOIN LATERAL (
                SELECT m.created_at FROM messages m
                WHERE m.thread_id = t.id ORDER BY m.created_at DESC LIMIT 1
            ) latest ON true
            WHERE t.patient_id = $1 AND NOT t.deleted
            ORDER BY greatest(latest.created_at, t.updated_at) DESC, t.id
            LIMIT 1
            """,
            patient_id,
        )
        if thread_id is None:
            return Snapshot(version, None)
        rows = await conn.fetch(
            """
            SELECT * FROM (
                SELECT id, thread_id, role, content, svg_path, source, device_id,
                       created_at, updated_at, finish_reason, reply_to
                FROM messages
                WHERE thread_id = $1 AND patient_id = $2 AND NOT deleted
                ORDER BY created_at DESC, id DESC
                LIMIT $3
            ) latest ORDER BY created_at, id
            """,
            thread_id,
            patient_id,
            limit,
        )
    return Snapshot(version, thread_id, [_message(row) for row in rows])


def _message(row: Any) -> dict[str, Any]:
    # The shape of a message change's data (sql/0003), with its id; absent values left out.
    return {key: value for key, value in dict(row).items() if value is not None}
