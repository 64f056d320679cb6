"""A socket ends with its token: a timer at the token's `exp` (none for a token without
one), moved when an `auth` frame brings a fresh token for the same holder."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TokenExpiry:
    def __init__(self, on_expired: Callable[[], None]) -> None:
        self._on_expired = on_expired
        self._timer: asyncio.TimerHandle | None = None

    def set(self, expires_at: float | None) -> None:
        """Expire at `expires_at` (unix time) instead of whenever was set before."""
        self.cancel()
        if expires_at is not None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, expires_at - time.time())
            self._timer = loop.call_at(loop.time() + delay, self._expired)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        self._on_expired()
