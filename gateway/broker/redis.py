"""Redis pub/sub broker: fan-out across gateway processes and hosts.

One subscriber connection per process carries every topic this process has local
listeners for, plus a private control channel that keeps the connection subscribed (and
so readable) while no topic is. When the connection drops, a reconnect loop backs off,
resubscribes every topic and reports the recovery, so sessions can tell their clients to
catch up from PostgreSQL. Publishing goes through one pipelined connection of its own
(gateway/broker/publisher.py).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from gateway.broker import BrokerUnavailable, MessageHandler, RecoveryHandler
from gateway.broker.publisher import Publisher, PublishFailed
from gateway.metrics import BROKER_PUBLISH_FAILURES

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 2.0
SUBSCRIBE_TIMEOUT_S = 5.0


POOL_SIZE = 32  # connections per process for commands; callers wait for a free one
POOL_WAIT_S = 5.0


def redis_client(url: str) -> Redis:
    """A client whose pool is bounded and makes callers wait rather than fail when every
    connection is busy (a crowd of sockets joining at once)."""
    pool = BlockingConnectionPool.from_url(
        url, max_connections=POOL_SIZE, timeout=POOL_WAIT_S, socket_connect_timeout=2
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


class RedisBroker:
    name = "redis"

    def __init__(self, url: str) -> None:
        self._client = redis_client(url)  # subscriptions and pings
        self._publisher = Publisher(url)
        self._control = f"painar:gateway:{uuid.uuid4()}"
        self._topics: set[str] = set()
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    async def start(self, on_message: MessageHandler, on_recovered: RecoveryHandler) -> None:
        self._reader = asyncio.create_task(self._read(on_message, on_recovered))
        try:
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                await self._connected.wait()
        except TimeoutError:
            log.warning("redis broker not reachable yet; retrying in the background")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self._publisher.close()
        await self._client.aclose()

    async def publish(self, topic: str, message: bytes) -> None:
        try:
            await self._publisher.publish(topic, message)
        except (PublishFailed, OSError, TimeoutError) as exc:
            BROKER_PUBLISH_FAILURES.labels(self.name).inc()
            log.warning("redis publish failed: %s", type(exc).__name__)
            raise BrokerUnavailable("redis") from exc

    async def subscribe(self, topic: str) -> None:
        self._topics.add(topic)
        if self._pubsub is None or not self._connected.is_set():
            return  # the reconnect loop subscribes it
        confirmed = self._confirmations.setdefault(
            topic, asyncio.get_running_loop().create_future()
        )
        try:
            await self._pubsub.subscribe(topic)
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                await asyncio.shield(confirmed)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("redis subscribe failed: %s", type(exc).__name__)
        finally:
            if self._confirmations.get(topic) is confirmed and confirmed.done():
                del self._confirmations[topic]

    async def unsubscribe(self, topic: str) -> None:
        self._topics.discard(topic)
        if self._pubsub is not None and self._connected.is_set():
            try:
                await self._pubsub.unsubscribe(topic)
            except (RedisError, OSError) as exc:
                log.warning("redis unsubscribe failed: %s", type(exc).__name__)

    async def ping(self) -> None:
        await self._client.ping()

    async def _read(self, on_message: MessageHandler, on_recovered: RecoveryHandler) -> None:
        backoff = BACKOFF_MIN_S
        lost = False
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self._control, *self._topics)
                self._pubsub = pubsub
                self._connected.set()
                if lost:
                    log.info("redis broker link recovered")
                    lost = False
                    on_recovered()
                backoff = BACKOFF_MIN_S
                async for message in pubsub.listen():
                    kind = message["type"]
                    channel = message["channel"].decode()
                    if kind == b"message" or kind == "message":
                        on_message(channel, message["data"])
                    elif kind in (b"subscribe", "subscribe"):
                        confirmed = self._confirmations.get(channel)
                        if confirmed is not None and not confirmed.done():
                            confirmed.set_result(None)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if not lost:
                    log.warning("redis broker link lost (%s); reconnecting", type(exc).__name__)
                lost = True
            finally:
                self._connected.clear()
                self._pubsub = None
                await _close_quietly(pubsub)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)


async def _close_quietly(pubsub: Any) -> None:
    try:
        await pubsub.aclose()
    except (RedisError, OSError):
        pass
