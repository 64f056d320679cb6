"""One summary run: every live thread with a message written since its last summary (of
one patient, or one thread, on demand), at most SUMMARY_MAX_THREADS of them, SUMMARY_
CONCURRENCY at a time. Each summary is read at one change-log version and written through
the change log keyed by it (a thread's summary only moves forward), so a run repeated,
or resumed after its process was killed, summarises each version of a thread once. The
model's spend is bounded per thread (the reply is cut at SUMMARY_MAX_CHARS) and per run.

And the schedule: every process waits for SUMMARY_AT (in SUMMARY_TIMEZONE); one of them,
holding a PostgreSQL advisory lock, runs the day's job unless `summary_runs` says it ran.
A process starting after that time on a day whose run did not finish (it was killed, or
the gateway was down) runs it then."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as clock
from uuid import UUID
from zoneinfo import ZoneInfo

from gateway.providers.base import ChatProvider, Embedder, UpstreamFailure
from gateway.settings import Settings
from gateway.summaries.metrics import SUMMARIZED, SUMMARY_FAILURES, SUMMARY_RUN_SECONDS
from gateway.summaries.summarize import extractive, prompt
from gateway.sync.writes import ChangeWriter
from storage.changes import Applied, Mutation, ThreadSummaryData
from storage.database import Database
from storage.summaries import (
    DueThread,
    Transcript,
    begin_run,
    due_threads,
    finish_run,
    store_memory,
    transcript,
)

log = logging.getLogger(__name__)

# The advisory lock of the daily run (the one-key space: a constant, "summ" in ASCII).
RUN_LOCK = 0x7375_6D6D


@dataclass(frozen=True)
class SummaryConfig:
    at: clock | None  # None: no schedule (on demand only)
    zone: ZoneInfo
    concurrency: int
    max_threads: int
    max_chars: int

    @classmethod
    def from_settings(cls, settings: Settings) -> SummaryConfig:
        return cls(
            at=settings.summary_time,
            zone=ZoneInfo(settings.summary_timezone),
            concurrency=settings.summary_concurrency,
            max_threads=settings.summary_max_threads,
            max_chars=settings.summary_max_chars,
        )


@dataclass
class RunResult:
    summarized: int = 0
    failed: int = 0
    unchanged: int = 0  # summarised meanwhile by another run, or emptied


class SummaryJob:
    def __init__(
        self,
        config: SummaryConfig,
        *,
        db: Database,
        writer: ChangeWriter,
        chat: ChatProvider,
        embedder: Embedder,
        offline: bool,
    ) -> None:
        self.config = config
        self.db = db
        self.writer = writer
        self.chat = chat
        self.embedder = embedder
        self.offline = offline
        self._task: asyncio.Task[None] | None = None

    async def run(
        self, *, patient_id: UUID | None = None, thread_id: UUID | None = None
    ) -> RunResult:
        started = time.perf_counter()
        async with self.db.acquire() as conn:
            due = await due_threads(
                conn, patient_id=patient_id, thread_id=thread_id, limit=self.config.max_threads
            )
        result = RunResult()
        gate = asyncio.Semaphore(self.config.concurrency)

        async def one(thread: DueThread) -> None:
            async with gate:
                await self._summarize(thread, result)

        await asyncio.gather(*(one(thread) for thread in due))
        SUMMARY_RUN_SECONDS.observe(time.perf_counter() - started)
        return result

    async def _summarize(self, thread: DueThread, result: RunResult) -> None:
        async with self.db.acquire() as conn:
            read = await transcript(conn, thread)
        if read is None or not read.turns:
            result.unchanged += 1
            return
        try:
            text = (
                extractive(read, self.config.max_chars)
                if self.offline
                else await self._model_summary(read)
            )
        except UpstreamFailure as exc:  # the thread stays due: the next run tries again
            SUMMARY_FAILURES.inc()
            result.failed += 1
            log.warning("a thread summary failed: %s", exc.kind)
            return
        if not text:
            result.unchanged += 1
            return
        written = await self.writer.write(
            thread.patient_id,
            [Mutation("thread", "upsert", thread.id, ThreadSummaryData(text, read.version))],
            device_id=None,
        )
        if not isinstance(written.results[0], Applied):
            result.unchanged += 1  # summarised at this version already, or deleted
            return
        SUMMARIZED.inc()
        result.summarized += 1
        try:
            [vector] = await self.embedder.embed([text])
        except UpstreamFailure as exc:  # the summary stands; its memory comes next time
            SUMMARY_FAILURES.inc()
            log.warning("embedding a thread summary failed: %s", exc.kind)
            return
        async with self.db.acquire() as conn:
            await store_memory(conn, thread, text, vector)

    async def _model_summary(self, read: Transcript) -> str:
        pieces: list[str] = []
        length = 0
        stream = self.chat.stream(prompt(read))
        try:
            async for chunk in stream:
                pieces.append(chunk.delta)
                length += len(chunk.delta)
                if length >= self.config.max_chars:
                    break  # the spend is bounded: the rest is not asked for
        finally:
            await stream.aclose()
        return "".join(pieces).strip()[: self.config.max_chars]

    # ---- the schedule --------------------------------------------------------------------

    def start(self) -> None:
        if self.config.at is not None:
            self._task = asyncio.create_task(self._schedule())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def run_day(self, run_date: date) -> RunResult | None:
        """The day's run, if this process gets the lock and nobody finished it; None
        otherwise."""
        async with self.db.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RUN_LOCK):
                return None  # another process is running it
            try:
                if not await begin_run(conn, run_date):
                    return None
                log.info("summary run of %s started", run_date.isoformat())
                result = await self.run()
                await finish_run(conn, run_date, result.summarized, result.failed)
                log.info(
                    "summary run of %s: %d summarised, %d failed",
                    run_date.isoformat(),
                    result.summarized,
                    result.failed,
                )
                return result
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", RUN_LOCK)

    async def _schedule(self) -> None:
        at = self.config.at
        assert at is not None
        while True:
            now = datetime.now(self.config.zone)
            today = datetime.combine(now.date(), at, self.config.zone)
            if now >= today:
                # Today's time has passed: run it if nobody did (a late start, a crash).
                try:
                    await self.run_day(now.date())
                except Exception as exc:
                    log.warning("the summary run failed: %s", type(exc).__name__)
                today += timedelta(days=1)
            await asyncio.sleep(max(1.0, (today - datetime.now(self.config.zone)).total_seconds()))
