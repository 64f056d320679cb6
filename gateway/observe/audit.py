"""The access audit trail, written from the gateway.

Accesses that reveal a patient's data (an observation starting, a snapshot, a pull) are
written before the data goes out (`write`): if the trail cannot be written, nothing is
served. Denied attempts and observations ending are queued (`note`) and written in
batches, so a client sending forbidden frames cannot hold a database connection per frame.
A retention job deletes rows older than AUDIT_RETENTION_DAYS, once at start and daily.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from gateway.observe.metrics import AUDIT_ROWS, AUDIT_WRITE_FAILURES
from storage.audit import AuditEvent, prune, record
from storage.database import Database

log = logging.getLogger(__name__)

MAX_QUEUED = 10_000  # past this (the database long unreachable), the oldest go, counted
PRUNE_EVERY_S = 24 * 3600


class AuditLog:
    def __init__(self, db: Database, retention_days: int) -> None:
        self.db = db
        self.retention = timedelta(days=retention_days)
        self._queue: list[AuditEvent] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._writer()), asyncio.create_task(self._pruner())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._flush()  # what was queued last

    def note(self, event: AuditEvent) -> None:
        self._queue.append(event)
        if len(self._queue) > MAX_QUEUED:
            del self._queue[0]
            AUDIT_WRITE_FAILURES.inc()
        self._wake.set()

    async def write(self, events: Sequence[AuditEvent]) -> None:
        async with self.db.acquire() as conn:
            await record(conn, events)
        AUDIT_ROWS.inc(len(events))

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        batch, self._queue = self._queue, []
        if not batch:
            return
        try:
            await self.write(batch)
        except Exception as exc:  # kept for the next round
            AUDIT_WRITE_FAILURES.inc()
            log.warning("writing %d audit rows failed: %s", len(batch), type(exc).__name__)
            self._queue[:0] = batch
            await asyncio.sleep(1.0)
            self._wake.set()

    async def _pruner(self) -> None:
        while True:
            try:
                async with self.db.acquire() as conn:
                    gone = await prune(conn, datetime.now(UTC) - self.retention)
                if gone:
                    log.info("audit retention: %d rows older than the retention deleted", gone)
            except Exception as exc:
                log.warning("audit retention failed: %s", type(exc).__name__)
            await asyncio.sleep(PRUNE_EVERY_S)
