"""Lookups by key made together: callers that ask while one batch is on its way are
answered by the next batch, one call for all of their keys.

Alone, a caller waits for one call, as it would without this; in a crowd (thousands of
sockets reconnecting after a drain) one database round trip serves hundreds of them and
holds one pooled connection instead of hundreds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Batched(Generic[K, V]):
    def __init__(
        self, fetch: Callable[[list[K]], Awaitable[dict[K, V]]], *, max_batch: int = 500
    ) -> None:
        """`fetch` answers a list of distinct keys with a value for each of them."""
        self._fetch = fetch
        self._max_batch = max_batch
        self._queue: list[tuple[K, asyncio.Future[V]]] = []
        self._runner: asyncio.Task[None] | None = None

    async def get(self, key: K) -> V:
        """The value of `key`; what `fetch` raised for its batch, if it raised."""
        answer: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._queue.append((key, answer))
        if self._runner is None:
            self._runner = asyncio.create_task(self._run())
        return await answer

    async def _run(self) -> None:
        batch: list[tuple[K, asyncio.Future[V]]] = []
        try:
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                try:
                    found = await self._fetch(list(dict.fromkeys(key for key, _ in batch)))
                except Exception as exc:
                    for _, answer in batch:
                        if not answer.done():  # a caller that gave up has no one to tell
                            answer.set_exception(exc)
                    continue
                for key, answer in batch:
                    if not answer.done():
                        answer.set_result(found[key])
        finally:
            self._runner = None
            for _, answer in (*batch, *self._queue):  # cancelled (shut down) midway
                answer.cancel()
            self._queue.clear()
