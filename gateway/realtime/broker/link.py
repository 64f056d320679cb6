"""One raw connection to Redis for the fan-out's hot path.

Every fan-out is a PUBLISH and every delivery a pushed message, so both sit on the path
of every chat token. A link writes commands straight onto its socket and hands each reply
to a callback from the event loop's read callback, parsed by hiredis: no task wake-up per
reply and no pool hand-off, which redis-py's connections cost (measured in
docs/benchmarks.md, chat section). By default replies answer the link's commands in order;
the subscriber takes them over for pushed messages.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url

CONNECT_TIMEOUT_S = 2.0
SUBSCRIBE_TIMEOUT_S = 5.0

Reply = Any  # what hiredis parses: bytes, int, list, or a hiredis.ReplyError


class LinkLost(Exception):
    """The connection ended, or Redis refused something the link depends on."""


def command(*parts: bytes) -> bytes:
    """One command in the Redis protocol (RESP2)."""
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


class Link(asyncio.Protocol):
    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = hiredis.Reader()
        self._pending: deque[asyncio.Future[Reply]] = deque()
        self.on_reply: Callable[[Reply], None] = self._answer
        self._loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self._corked: list[bytes] | None = None  # written this turn of the loop, not yet sent

    # ---- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self._parser.feed(data)
        while (reply := self._parser.gets()) is not False:
            self.on_reply(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail(LinkLost("connection to redis lost"))
        if not self.closed.done():
            self.closed.set_result(None)

    # ---- use -------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return self._transport is not None

    def write(self, data: bytes) -> None:
        """Queue `data`; what is written in one turn of the event loop goes out in one
        send (a storm of connects makes thousands of small commands at once)."""
        if self._transport is None:
            raise LinkLost("connection to redis lost")
        if self._corked is None:
            self._corked = [data]
            self._loop.call_soon(self._flush)
        else:
            self._corked.append(data)

    def _flush(self) -> None:
        corked, self._corked = self._corked, None
        if corked and self._transport is not None:
            self._transport.write(corked[0] if len(corked) == 1 else b"".join(corked))

    def call(self, data: bytes) -> asyncio.Future[Reply]:
        """Send a command; the future gets its reply (replies come in command order)."""
        self.write(data)
        return self.expect()

    def expect(self) -> asyncio.Future[Reply]:
        """The next reply not yet expected, for a command already written."""
        reply: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending.append(reply)
        return reply

    def close(self) -> None:
        if self._transport is not None:
            self._flush()
            self._transport.close()

    def _answer(self, reply: Reply) -> None:
        if not self._pending:
            return  # nothing asked for it (a reply to a command whose caller gave up)
        waiting = self._pending.popleft()
        if not waiting.done():
            waiting.set_result(reply)

    def _fail(self, error: Exception) -> None:
        while self._pending:
            waiting = self._pending.popleft()
            if not waiting.done():
                waiting.set_exception(error)


class Confirmations:
    """Subscriptions sent on a subscriber link and not yet confirmed, by channel: the
    subscriber hands each confirmation it reads to `confirm`."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[None]] = {}

    async def subscribe(self, link: Link, verb: bytes, groups: list[list[str]]) -> None:
        """Send `verb` once per group of channels and wait until Redis confirms each
        channel (LinkLost or TimeoutError if it does not within SUBSCRIBE_TIMEOUT_S)."""
        loop = asyncio.get_running_loop()
        channels = [c for group in groups for c in group]
        waits = [self._waiting.setdefault(c, loop.create_future()) for c in channels]
        link.write(b"".join(command(verb, *(c.encode() for c in group)) for group in groups))
        try:
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                await asyncio.gather(*(asyncio.shield(w) for w in waits))
        finally:
            for channel, confirmed in zip(channels, waits, strict=True):
                if self._waiting.get(channel) is confirmed and confirmed.done():
                    del self._waiting[channel]

    def confirm(self, channel: str) -> None:
        confirmed = self._waiting.get(channel)
        if confirmed is not None and not confirmed.done():
            confirmed.set_result(None)


@functools.cache
def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Verifies the server against the system's CAs and `ca_file`'s (made once: loading
    the system's store takes milliseconds)."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


async def open_link(url: str) -> Link:
    """Connect to the Redis at `url` (redis://, rediss:// or unix://) and authenticate."""
    options: dict[str, Any] = dict(parse_url(url))
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(CONNECT_TIMEOUT_S):
        link: Link
        if options.get("connection_class") is UnixDomainSocketConnection:
            _, link = await loop.create_unix_connection(Link, options["path"])
        else:
            tls = options.get("connection_class") is SSLConnection
            _, link = await loop.create_connection(
                Link,
                options.get("host", "localhost"),
                options.get("port", 6379),
                ssl=tls_context(options.get("ssl_ca_certs")) if tls else None,
            )
        try:
            if options.get("password"):
                user = options.get("username")
                parts = [b"AUTH", *([user.encode()] if user else []), options["password"].encode()]
                if isinstance(await link.call(command(*parts)), hiredis.ReplyError):
                    raise LinkLost("redis refused the credentials")
        except BaseException:
            link.close()
            raise
    return link
