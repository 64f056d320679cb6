"""Thread summaries (sql/0012): which threads changed since their last summary, what a
summary is made from (read at one change-log version), the summaries' memories, and the
record of each day's scheduled run. The summary itself is written through the change log
(storage/changes.py, `ThreadSummaryData`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from uuid import UUID

from storage.database import Connection


@dataclass(frozen=True)
class DueThread:
    id: UUID
    patient_id: UUID


@dataclass(frozen=True)
class Turn:
    role: str
    content: str
    created_at: datetime


@dataclass(frozen=True)
class Transcript:
    version: int  # the patient's change-log version it was read at
    title: str
    turns: list[Turn]


@dataclass(frozen=True)
class SummaryMemory:
    thread_id: UUID
    content: str
    summarized_at: datetime | None


async def due_threads(
    conn: Connection, *, patient_id: UUID | None, thread_id: UUID | None, limit: int
) -> list[DueThread]:
    """Live threads with a message written since their last summary (or never
    summarized), least recently changed first."""
    rows = await conn.fetch(
        """
        SELECT t.id, t.patient_id FROM threads t
        WHERE NOT t.deleted
          AND ($1::uuid IS NULL OR t.patient_id = $1) AND ($2::uuid IS NULL OR t.id = $2)
          AND EXISTS (
              SELECT 1 FROM messages m
              WHERE m.thread_id = t.id AND NOT m.deleted AND m.content <> ''
                AND (t.summarized_at IS NULL OR m.updated_at > t.summarized_at))
        ORDER BY t.updated_at LIMIT $3
        """,
        patient_id,
        thread_id,
        limit,
    )
    return [DueThread(r["id"], r["patient_id"]) for r in rows]


async def transcript(conn: Connection, thread: DueThread) -> Transcript | None:
    """The thread's live messages, oldest first, and the version they were read at (one
    snapshot); None when the thread is gone."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        version = await conn.fetchval(
            "SELECT sync_version FROM patients WHERE id = $1", thread.patient_id
        )
        title = await conn.fetchval(
            "SELECT title FROM threads WHERE id = $1 AND NOT deleted", thread.id
        )
        if title is None:
            return None
        rows = await conn.fetch(
            "SELECT role, content, created_at FROM messages "
            "WHERE thread_id = $1 AND NOT deleted AND content <> '' ORDER BY created_at, id",
            thread.id,
        )
    return Transcript(int(version or 0), title, [Turn(*row) for row in rows])


async def store_memory(
    conn: Connection, thread: DueThread, content: str, embedding: list[float]
) -> None:
    """The summary's memory, if the thread still has that summary (not deleted since)."""
    await conn.execute(
        """
        INSERT INTO summary_memories (thread_id, patient_id, content, embedding)
        SELECT $1, $2, $3, $4 FROM threads WHERE id = $1 AND summary = $3
        ON CONFLICT (thread_id) DO UPDATE
            SET content = EXCLUDED.content, embedding = EXCLUDED.embedding, created_at = now()
        """,
        thread.id,
        thread.patient_id,
        content,
        embedding,
    )


async def nearest_summaries(
    conn: Connection, patient_id: UUID, vector: list[float], *, k: int, exclude: UUID
) -> list[SummaryMemory]:
    """The patient's `k` summaries nearest to `vector`, other than thread `exclude`'s (a
    patient has one per thread: an exact scan of their own rows)."""
    rows = await conn.fetch(
        """
        SELECT s.thread_id, s.content, t.summarized_at
        FROM summary_memories s JOIN threads t ON t.id = s.thread_id
        WHERE s.patient_id = $1 AND s.thread_id <> $3 AND NOT t.deleted
        ORDER BY s.embedding <=> $2 LIMIT $4
        """,
        patient_id,
        vector,
        exclude,
        k,
    )
    return [SummaryMemory(r["thread_id"], r["content"], r["summarized_at"]) for r in rows]


async def begin_run(conn: Connection, run_date: date) -> bool:
    """Whether the run of `run_date` is still to do (not finished by any process)."""
    await conn.execute(
        "INSERT INTO summary_runs (run_date) VALUES ($1) ON CONFLICT DO NOTHING", run_date
    )
    finished = await conn.fetchval(
        "SELECT finished_at FROM summary_runs WHERE run_date = $1", run_date
    )
    return finished is None


async def finish_run(conn: Connection, run_date: date, summarized: int, failed: int) -> None:
    await conn.execute(
        "UPDATE summary_runs SET finished_at = now(), summarized = summarized + $2, "
        "failed = failed + $3 WHERE run_date = $1",
        run_date,
        summarized,
        failed,
    )


@dataclass(frozen=True)
class ThreadSummary:
    thread_id: UUID
    title: str
    summary: str
    summarized_at: datetime


async def thread_summaries(
    conn: Connection,
    patient_id: UUID,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    thread_id: UUID | None = None,
) -> list[ThreadSummary]:
    """The patient's live threads' summaries written in [since, until), of one thread if
    given, oldest first (for export)."""
    rows = await conn.fetch(
        """
        SELECT id, title, summary, summarized_at FROM threads
        WHERE patient_id = $1 AND NOT deleted AND summary IS NOT NULL
          AND ($2::timestamptz IS NULL OR summarized_at >= $2)
          AND ($3::timestamptz IS NULL OR summarized_at < $3)
          AND ($4::uuid IS NULL OR id = $4)
        ORDER BY summarized_at, id
        """,
        patient_id,
        since,
        until,
        thread_id,
    )
    return [ThreadSummary(r["id"], r["title"], r["summary"], r["summarized_at"]) for r in rows]
