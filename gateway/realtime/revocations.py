"""Revoked subjects, on every process: the revocations in PostgreSQL are read every
REVOCATION_CHECK_S; a new one voids the subject's tokens for new connections and requests
(through the authenticator) and closes the subject's open sockets here (4401)."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from gateway.auth import RevokedSubjects
from gateway.realtime.service import RealtimeService
from storage.database import Database
from storage.revocations import revoked_since

log = logging.getLogger(__name__)


class RevocationWatcher:
    def __init__(
        self,
        db: Database,
        revoked: RevokedSubjects,
        realtime: RealtimeService,
        check_s: float,
    ) -> None:
        self.db = db
        self.revoked = revoked
        self.realtime = realtime
        self.check_s = check_s
        self._seen: datetime | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.check()  # before the first connection is accepted
        self._task = asyncio.create_task(self._watch())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def check(self) -> None:
        async with self.db.acquire() as conn:
            fresh = await revoked_since(conn, self._seen)
        for revocation in fresh:
            before = revocation.revoked_before.timestamp()
            self.revoked.add(revocation.sub, before)
            self.realtime.close_revoked(revocation.sub, self.revoked)
            self._seen = revocation.revoked_at

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.check_s)
            try:
                await self.check()
            except Exception as exc:  # the database is down: the next round catches up
                log.warning("reading token revocations failed: %s", type(exc).__name__)
