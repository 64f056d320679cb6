"""Redis pub/sub broker: fan-out across gateway processes and hosts.

One subscriber link per process (gateway/realtime/broker/link.py) carries every topic this
process has local listeners for, plus a private control channel that keeps the
connection subscribed while no topic is; each pushed message is handed on from the event
loop's read callback. When the connection drops, a reconnect loop backs off, resubscribes
every topic and reports the recovery, so sessions can tell their clients to catch up
from PostgreSQL. Publishing goes through one pipelined link of its own
(gateway/realtime/broker/publisher.py); readiness pings use a redis-py client.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import hiredis

from gateway.realtime.broker import MessageHandler, RecoveryHandler
from gateway.realtime.broker.commands import redis_client
from gateway.realtime.broker.failures import (
    BACKOFF_MAX_S,
    BACKOFF_MIN_S,
    first_connection,
    hand_on,
    publish_failed,
    stop,
)
from gateway.realtime.broker.link import (
    Confirmations,
    Link,
    LinkLost,
    Reply,
    command,
    open_link,
)
from gateway.realtime.broker.publisher import CommandFailed, Publisher

log = logging.getLogger(__name__)


class RedisBroker:
    name = "redis"

    def __init__(self, url: str) -> None:
        self._url = url
        self._client = redis_client(url)  # pings
        self._publisher = Publisher(url)
        self._control = f"painar:gateway:{uuid.uuid4()}"
        self._topics: set[str] = set()
        self._confirmations = Confirmations()
        self._link: Link | None = None  # the subscriber, while connected
        self._on_message: MessageHandler | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    async def start(self, on_message: MessageHandler, on_recovered: RecoveryHandler) -> None:
        self._on_message = on_message
        self._reader = asyncio.create_task(self._read(on_recovered))
        await first_connection(self._connected, self.name)

    async def close(self) -> None:
        await stop(self._reader)
        self._publisher.close()
        await self._client.aclose()

    async def publish(self, topic: str, message: bytes) -> None:
        try:
            await self._publisher.publish(topic, message)
        except CommandFailed as exc:
            raise publish_failed(self.name, exc) from exc

    async def subscribe(self, topic: str) -> None:
        self._topics.add(topic)
        if self._link is None or not self._connected.is_set():
            return  # the reconnect loop subscribes it
        try:
            await self._confirmations.subscribe(self._link, b"SUBSCRIBE", [[topic]])
        except (LinkLost, TimeoutError) as exc:
            log.warning("redis subscribe failed: %s", type(exc).__name__)

    async def unsubscribe(self, topic: str) -> None:
        self._topics.discard(topic)
        if self._link is not None and self._connected.is_set():
            try:
                self._link.write(command(b"UNSUBSCRIBE", topic.encode()))
            except LinkLost as exc:
                log.warning("redis unsubscribe failed: %s", type(exc).__name__)

    async def ping(self) -> None:
        await self._client.ping()

    def _pushed(self, reply: Reply) -> None:
        """A message or a confirmation the subscriber link received."""
        if not isinstance(reply, list) or len(reply) != 3:
            if isinstance(reply, hiredis.ReplyError):
                log.warning("redis refused a subscription command")
            return
        kind, channel = reply[0], reply[1].decode()
        if kind == b"message":
            hand_on(self._on_message, channel, reply[2])
        elif kind == b"subscribe":
            self._confirmations.confirm(channel)

    async def _read(self, on_recovered: RecoveryHandler) -> None:
        backoff = BACKOFF_MIN_S
        lost = False
        while True:
            link: Link | None = None
            try:
                link = await open_link(self._url)
                link.on_reply = self._pushed
                await self._confirmations.subscribe(
                    link, b"SUBSCRIBE", [[self._control, *self._topics]]
                )
                self._link = link
                self._connected.set()
                if lost:
                    log.info("redis broker link recovered")
                    lost = False
                    on_recovered(None)
                backoff = BACKOFF_MIN_S
                await link.closed
                raise LinkLost("connection to redis lost")
            except asyncio.CancelledError:
                raise
            except (LinkLost, OSError, TimeoutError) as exc:
                if not lost:
                    log.warning("redis broker link lost (%s); reconnecting", type(exc).__name__)
                lost = True
            finally:
                self._connected.clear()
                self._link = None
                if link is not None:
                    link.close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)
