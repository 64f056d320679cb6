"""The loop of a background worker that drains a queue table: take a batch, go again at
once while batches come full, rest `poll_s` otherwise; a failure (the database
unreachable) is logged by its type, never its data, and the loop goes on."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


async def poll_forever(
    step: Callable[[], Awaitable[int]], *, batch: int, poll_s: float, what: str
) -> None:
    """Run `step` (it returns how many items it took) until cancelled."""
    while True:
        try:
            taken = await step()
        except Exception as exc:
            log.warning("%s failed: %s", what, type(exc).__name__)
            taken = 0
        if taken < batch:
            await asyncio.sleep(poll_s)


class Every:
    """True at most once per `seconds` (a queue depth read now and then, not per batch)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._at: float | None = None

    def due(self) -> bool:
        now = time.monotonic()
        if self._at is not None and now - self._at < self.seconds:
            return False
        self._at = now
        return True
