"""PUBLISH over one pipelined Redis connection.

Every fan-out is a PUBLISH, so it is on the hot path of every write and every chat
token. This writes each command straight onto one connection as it comes and matches the
integer replies in order, instead of taking a pooled connection per command: fewer
allocations and no pool hand-offs, and one connection keeps this process's publishes in
the order they were made. A publish returns once Redis has taken it; if the connection
fails, every waiting publish raises and the next one reconnects.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any

from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url

CONNECT_TIMEOUT_S = 2.0
REPLY_TIMEOUT_S = 2.0


class PublishFailed(Exception):
    pass


class Publisher:
    def __init__(self, url: str) -> None:
        self._options: dict[str, Any] = dict(parse_url(url))
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._replies: deque[asyncio.Future[None]] = deque()
        self._reading: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()

    async def publish(self, channel: str, message: bytes) -> None:
        writer = self._writer if self._writer is not None else await self._connect()
        reply: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._replies.append(reply)
        name = channel.encode()
        writer.write(
            b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n" % (len(name), name, len(message))
            + message
            + b"\r\n"
        )
        try:
            async with asyncio.timeout(REPLY_TIMEOUT_S):
                await reply
        except TimeoutError:
            # A Redis that stops answering must not hold up writers (they wait on publishes).
            self._drop(PublishFailed("no reply from redis"))
            raise PublishFailed("no reply from redis") from None

    async def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
            await asyncio.gather(self._reading, return_exceptions=True)
        self._drop(PublishFailed("closed"))

    async def _connect(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is not None:
                return self._writer
            options = self._options
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                if options.get("connection_class") is UnixDomainSocketConnection:
                    reader, writer = await asyncio.open_unix_connection(options["path"])
                else:
                    tls = ssl.create_default_context()
                    reader, writer = await asyncio.open_connection(
                        options.get("host", "localhost"),
                        options.get("port", 6379),
                        ssl=tls if options.get("connection_class") is SSLConnection else None,
                    )
                if options.get("password"):
                    await _auth(reader, writer, options.get("username"), options["password"])
            self._reader, self._writer = reader, writer
            self._reading = asyncio.create_task(self._read(reader))
            return writer

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    raise PublishFailed("connection closed")
                reply = self._replies.popleft()
                if line.startswith(b":"):
                    reply.set_result(None)
                else:
                    reply.set_exception(PublishFailed(line.decode(errors="replace").strip()))
        except asyncio.CancelledError:
            raise
        except (OSError, PublishFailed, IndexError) as exc:
            self._drop(exc if isinstance(exc, PublishFailed) else PublishFailed(repr(exc)))

    def _drop(self, error: Exception) -> None:
        """Fail what waits and forget the connection; the next publish reconnects."""
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
        while self._replies:
            reply = self._replies.popleft()
            if not reply.done():
                reply.set_exception(error)


async def _auth(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, user: str | None, password: str
) -> None:
    parts = [b"AUTH", *([user.encode()] if user else []), password.encode()]
    writer.write(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
    line = await reader.readline()
    if not line.startswith(b"+OK"):
        raise PublishFailed("redis refused the credentials")
