"""Commands over one pipelined Redis connection: PUBLISH (or a cluster shard's SPUBLISH),
and presence's few hash commands.

Each command is written onto one link as it comes (the link sends what one turn of the
event loop wrote together) and the replies are matched in order, instead of taking a
pooled connection per command: fewer allocations and no pool hand-offs (redis-py's pool
costs several times the command itself), and one connection keeps this process's
commands in the order they were made. A call returns once Redis has answered; if the
connection fails, every waiting call raises and the next one reconnects.
"""

from __future__ import annotations

import asyncio

import hiredis

from gateway.realtime.broker.link import Link, LinkLost, Reply, command, open_link

REPLY_TIMEOUT_S = 2.0


class CommandFailed(Exception):
    """Redis could not be reached, did not answer in time, or refused the command."""


class PipelinedCommands:
    def __init__(self, url: str) -> None:
        self._url = url
        self._link: Link | None = None
        self._connecting = asyncio.Lock()

    async def call(self, *commands: tuple[bytes, ...]) -> list[Reply]:
        """Send `commands` together; their replies, in order (CommandFailed if any is
        an error)."""
        link = self._link if self._link is not None and self._link.open else await self._connect()
        try:
            async with asyncio.timeout(REPLY_TIMEOUT_S):
                link.write(b"".join(command(*parts) for parts in commands))
                waits = [link.expect() for _ in commands]
                replies = [await wait for wait in waits]
        except TimeoutError:
            # A Redis that stops answering must not hold up callers (writers wait on it).
            self._drop()
            raise CommandFailed("no reply from redis") from None
        except LinkLost as exc:
            raise CommandFailed(str(exc)) from None
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise CommandFailed(str(reply))
        return replies

    def close(self) -> None:
        self._drop()

    async def _connect(self) -> Link:
        async with self._connecting:
            if self._link is None or not self._link.open:
                try:
                    self._link = await open_link(self._url)
                except (LinkLost, OSError, TimeoutError) as exc:
                    raise CommandFailed(type(exc).__name__) from None
            return self._link

    def _drop(self) -> None:
        """Forget the connection (what waits on it fails); the next call reconnects."""
        if self._link is not None:
            self._link.close()
            self._link = None


class Publisher:
    def __init__(self, url: str, verb: bytes = b"PUBLISH") -> None:
        self._commands = PipelinedCommands(url)
        self._verb = verb

    async def publish(self, channel: str, message: bytes) -> None:
        """Returns once Redis has taken the message; CommandFailed if it has not."""
        await self._commands.call((self._verb, channel.encode(), message))

    def close(self) -> None:
        self._commands.close()
