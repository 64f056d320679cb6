"""PUBLISH (or a cluster shard's SPUBLISH) over one pipelined Redis connection.

This writes each PUBLISH straight onto one link as it comes and matches the integer
replies in order, instead of taking a pooled connection per command: fewer allocations
and no pool hand-offs, and one connection keeps this process's publishes in the order
they were made. A publish returns once Redis has taken it; if the connection fails,
every waiting publish raises and the next one reconnects.
"""

from __future__ import annotations

import asyncio

import hiredis

from gateway.realtime.broker.link import Link, LinkLost, command, open_link

REPLY_TIMEOUT_S = 2.0


class PublishFailed(Exception):
    pass


class Publisher:
    def __init__(self, url: str, verb: bytes = b"PUBLISH") -> None:
        self._url = url
        self._verb = verb
        self._link: Link | None = None
        self._connecting = asyncio.Lock()

    async def publish(self, channel: str, message: bytes) -> None:
        link = self._link if self._link is not None and self._link.open else await self._connect()
        try:
            async with asyncio.timeout(REPLY_TIMEOUT_S):
                reply = await link.call(command(self._verb, channel.encode(), message))
        except TimeoutError:
            # A Redis that stops answering must not hold up writers (they wait on publishes).
            self._drop()
            raise PublishFailed("no reply from redis") from None
        except LinkLost as exc:
            raise PublishFailed(str(exc)) from None
        if isinstance(reply, hiredis.ReplyError):
            raise PublishFailed(str(reply))

    async def close(self) -> None:
        self._drop()

    async def _connect(self) -> Link:
        async with self._connecting:
            if self._link is None or not self._link.open:
                try:
                    self._link = await open_link(self._url)
                except LinkLost as exc:
                    raise PublishFailed(str(exc)) from None
            return self._link

    def _drop(self) -> None:
        """Forget the connection (what waits on it fails); the next publish reconnects."""
        if self._link is not None:
            self._link.close()
            self._link = None
