"""A socket's outgoing frames: queued, then written by one flush per event-loop turn
for all sockets, or by a drain task while a socket cannot take more.

A fan-out of one frame to 500 sockets costs no task switch per socket: each outbox
queues the frame and registers with the loop's flusher, which runs once, right after
the publisher's turn, and writes every waiting frame of every registered socket. A write
normally completes at once (the ASGI send only waits when the transport has paused
writing); the flusher steps the send coroutine by hand and only when it does have to
wait hands it, and the rest of that socket's queue, to a drain task. Frames that pile up
within a turn go out back to back. The queue is bounded by frames and bytes; a socket
that fills it is closed with 1013 (slow consumer) and its frames are dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from gateway.realtime.metrics import CLOSES, QUEUE_FULL_CLOSES

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]


class Flusher:
    """Writes the queued frames of every outbox that got some during this loop turn."""

    def __init__(self) -> None:
        self._dirty: list[Outbox] = []
        self._scheduled = False

    def add(self, outbox: Outbox) -> None:
        self._dirty.append(outbox)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for outbox in dirty:
            outbox.flush()


class Outbox:
    __slots__ = (
        "_send",
        "_flusher",
        "_dirty",
        "_max_frames",
        "_max_bytes",
        "_queue",
        "_queued_bytes",
        "_drainer",
        "_close",
        "_on_overflow",
        "broken",
    )

    def __init__(
        self,
        send: Send,
        flusher: Flusher,
        *,
        max_frames: int,
        max_bytes: int,
        on_overflow: Callable[[], None],
    ) -> None:
        self._send = send
        self._on_overflow = on_overflow  # decides how to close (1013)
        self._flusher = flusher
        self._dirty = False  # registered with the flusher for this turn
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        # A list, not a deque: an idle socket's empty deque is 760 bytes, a list's 56, and
        # the queue is short (frames of one loop turn; at most max_frames, a slow peer's).
        self._queue: list[str] = []
        self._queued_bytes = 0
        self._drainer: asyncio.Task[None] | None = None
        self._close: tuple[int, str] | None = None
        self.broken = False  # the peer is gone: nothing more can be sent

    @property
    def closing(self) -> bool:
        return self._close is not None or self.broken

    def put(self, text: str) -> None:
        if self._close is not None or self.broken:
            return
        if len(self._queue) >= self._max_frames or self._queued_bytes + len(text) > self._max_bytes:
            QUEUE_FULL_CLOSES.inc()
            self._queue.clear()
            self._queued_bytes = 0
            self._on_overflow()
            return
        self._queue.append(text)
        self._queued_bytes += len(text)
        if self._drainer is None and not self._dirty:
            self._dirty = True
            self._flusher.add(self)

    def flush(self) -> None:
        """Write what is queued now, until a write has to wait (then the drain task
        carries on)."""
        self._dirty = False
        while self._queue and self._drainer is None and not self.broken:
            text = self._queue.pop(0)
            self._queued_bytes -= len(text)
            self._start(self._send({"type": "websocket.send", "text": text}))

    def close(self, code: int, reason: str = "") -> None:
        """Close once what is already queued has gone out (the first close wins)."""
        if self._close is not None or self.broken:
            return
        self._close = (code, reason)
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain(None, None))

    async def wait_closed(self) -> None:
        """Until the drain task (if any) has finished."""
        if self._drainer is not None:
            await asyncio.shield(self._drainer)

    def abandon(self) -> None:
        """Stop sending: the session is over and the peer will not take more."""
        self.broken = True
        self._queue.clear()
        if self._drainer is not None:
            self._drainer.cancel()

    def _start(self, write: Awaitable[None]) -> None:
        coro: Coroutine[Any, Any, None] = write  # type: ignore[assignment]
        try:
            waiting = coro.send(None)
        except StopIteration:
            return  # written without waiting: the common case
        except Exception as exc:
            coro.close()
            self._lost(exc)
            return
        self._drainer = asyncio.create_task(self._drain(coro, waiting))

    async def _drain(self, pending: Coroutine[Any, Any, None] | None, waiting: Any) -> None:
        try:
            if pending is not None:
                await _finish(pending, waiting)
            while self._queue:
                text = self._queue.pop(0)
                self._queued_bytes -= len(text)
                await self._send({"type": "websocket.send", "text": text})
            if self._close is not None:
                code, reason = self._close
                CLOSES.labels(str(code)).inc()
                await self._send({"type": "websocket.close", "code": code, "reason": reason})
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._lost(exc)
        finally:
            self._drainer = None

    def _lost(self, exc: Exception) -> None:
        log.debug("socket send failed: %s", type(exc).__name__)
        self.broken = True
        self._queue.clear()
        self._queued_bytes = 0


async def _finish(coro: Coroutine[Any, Any, None], waiting: Any) -> None:
    """Run a coroutine that was started by hand and is parked on the future `waiting`
    to completion, as a task would have."""
    try:
        while True:
            if isinstance(waiting, asyncio.Future):
                waiting._asyncio_future_blocking = False
                await asyncio.wait((waiting,))
            else:  # a bare yield: give the loop one turn
                await asyncio.sleep(0)
            try:
                waiting = coro.send(None)
            except StopIteration:
                return
    except BaseException:
        coro.close()
        raise
