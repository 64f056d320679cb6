"""One suite for both brokers: what every Broker promises
(gateway/realtime/broker/__init__.py), and what the hub builds on it."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Collection
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.realtime.broker import Broker, BrokerUnavailable
from gateway.realtime.broker.choose import broker_for
from gateway.realtime.broker.memory import MemoryBroker
from gateway.realtime.broker.redis import RedisBroker
from gateway.realtime.hub import Hub, patient_topic
from gateway.realtime.presence_stores import Member, presence_store_for
from protocol.frames import Pong
from tests.conftest import RedisServer
from tests.support import TIMEOUT_S


class Inbox:
    def __init__(self) -> None:
        self.messages: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.recoveries = 0

    def on_message(self, topic: str, message: bytes) -> None:
        self.messages.put_nowait((topic, message))

    def on_recovered(self, topics: Collection[str] | None) -> None:
        self.recoveries += 1

    async def next(self) -> tuple[str, bytes]:
        async with asyncio.timeout(TIMEOUT_S):
            return await self.messages.get()

    async def nothing(self, seconds: float = 0.2) -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.messages.get()


@pytest.fixture(params=["memory", "redis", "cluster"])
def broker_url(request: pytest.FixtureRequest) -> str | None:
    """REDIS_URL for a broker in-process (None), on one Redis, or on a Redis Cluster."""
    if request.param == "memory":
        return None
    if request.param == "redis":
        return str(request.getfixturevalue("redis_server").url)
    return str(request.getfixturevalue("redis_cluster").url)


@pytest.fixture
async def broker(broker_url: str | None) -> AsyncIterator[tuple[Broker, Inbox]]:
    instance = broker_for(broker_url)
    inbox = Inbox()
    await instance.start(inbox.on_message, inbox.on_recovered)
    try:
        yield instance, inbox
    finally:
        await instance.close()


async def test_subscribed_topics_are_delivered_in_publish_order(
    broker: tuple[Broker, Inbox],
) -> None:
    instance, inbox = broker
    await instance.subscribe("patient:a")
    for n in range(100):
        await instance.publish("patient:a", b"%d" % n)
    assert [await inbox.next() for _ in range(100)] == [
        ("patient:a", b"%d" % n) for n in range(100)
    ]


async def test_only_subscribed_topics_are_delivered(broker: tuple[Broker, Inbox]) -> None:
    instance, inbox = broker
    await instance.subscribe("patient:a")
    await instance.publish("patient:b", b"not for us")
    await instance.publish("patient:a", b"for us")
    assert await inbox.next() == ("patient:a", b"for us")
    await inbox.nothing()


async def test_unsubscribe_stops_delivery_and_subscribe_is_idempotent(
    broker: tuple[Broker, Inbox],
) -> None:
    instance, inbox = broker
    await instance.subscribe("patient:a")
    await instance.subscribe("patient:a")
    await instance.publish("patient:a", b"once")
    assert await inbox.next() == ("patient:a", b"once")
    await inbox.nothing()  # subscribed twice, delivered once
    await instance.unsubscribe("patient:a")
    await instance.publish("patient:a", b"gone")
    await inbox.nothing()


async def test_ping_answers_while_the_broker_is_up(broker: tuple[Broker, Inbox]) -> None:
    instance, _ = broker
    await instance.ping()


async def test_redis_with_a_password_takes_the_right_one_and_refuses_a_wrong_one() -> None:
    directory = Path(tempfile.mkdtemp(prefix="redis-"))
    server = RedisServer(directory, password="s3cret")
    server.start()
    try:
        await server.wait_ready()
        right = RedisBroker(f"unix://:s3cret@{server.socket}")
        inbox = Inbox()
        await right.start(inbox.on_message, inbox.on_recovered)
        wrong = RedisBroker(f"unix://:guess@{server.socket}")
        try:
            await right.subscribe("patient:a")
            await right.publish("patient:a", b"hello")
            assert await inbox.next() == ("patient:a", b"hello")
            with pytest.raises(BrokerUnavailable):
                await wrong.publish("patient:a", b"refused")
            await inbox.nothing()
        finally:
            await right.close()
            await wrong.close()
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


async def test_a_failing_delivery_does_not_take_the_redis_subscriber_down(
    redis_server: RedisServer,
) -> None:
    inbox = Inbox()

    def on_message(topic: str, message: bytes) -> None:
        if message == b"bad":
            raise RuntimeError("a listener failed")
        inbox.on_message(topic, message)

    broker = RedisBroker(redis_server.url)
    await broker.start(on_message, inbox.on_recovered)
    try:
        await broker.subscribe("patient:a")
        await broker.publish("patient:a", b"bad")
        await broker.publish("patient:a", b"good")
        assert await inbox.next() == ("patient:a", b"good")
        assert inbox.recoveries == 0  # the link stayed up
    finally:
        await broker.close()


class Socketlike:
    def __init__(self) -> None:
        self.frames: list[str] = []

    def deliver(self, text: str) -> None:
        self.frames.append(text)

    def broker_recovered(self) -> None:
        return None


@pytest.fixture
async def two_hubs(broker_url: str | None) -> AsyncIterator[tuple[Hub, Hub]]:
    """Two processes' hubs on one broker (the memory broker has one process only: both
    hubs are then the same)."""
    if broker_url is None:
        hub = Hub(MemoryBroker())
        await hub.start()
        yield hub, hub
        await hub.close()
        return
    first, second = Hub(broker_for(broker_url)), Hub(broker_for(broker_url))
    await first.start()
    await second.start()
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


async def test_a_hub_knows_when_its_publish_has_come_back_from_the_broker(
    two_hubs: tuple[Hub, Hub],
) -> None:
    """By its id and sequence in the envelope: once `came_back` is true, the other
    process has the frame too. A held topic is subscribed without being delivered."""
    publisher, other = two_hubs
    topic = patient_topic(uuid.uuid4())
    device = Socketlike()
    await other.join(topic, device)
    await publisher.hold(topic)
    frame = Pong(ts=1)
    seq = await publisher.publish(topic, frame)
    assert await publisher.came_back(topic, seq, TIMEOUT_S)
    assert device.frames == ['{"type":"pong","ts":1}']
    assert await publisher.came_back(topic, seq, 0.0)  # already back: no wait
    await publisher.release(topic)
    if publisher is not other:
        alone = await publisher.publish(topic, frame)  # no longer subscribed here
        assert not await publisher.came_back(topic, alone, 0.2)
    await other.leave(topic, device)


async def test_a_held_topic_carries_signals_but_counts_no_socket(
    two_hubs: tuple[Hub, Hub],
) -> None:
    publisher, other = two_hubs
    topic = patient_topic(uuid.uuid4())
    signals: asyncio.Queue[bytes] = asyncio.Queue()
    other.on_signal("test.signal", lambda _, payload: signals.put_nowait(payload))
    await other.hold(topic)
    assert other.listeners(topic) == frozenset()
    await publisher.signal(topic, "test.signal", b"stop")
    async with asyncio.timeout(TIMEOUT_S):
        assert await signals.get() == b"stop"
    await other.release(topic)


@pytest.mark.parametrize("broker_url", ["redis", "cluster"], indirect=True)
async def test_renewing_a_patient_whose_last_socket_just_left_is_a_no_op(
    broker_url: str,
) -> None:
    # A renewal round takes its list of patients first; sockets may leave meanwhile.
    store = presence_store_for(broker_url)
    patient = uuid.uuid4()
    try:
        member = Member("s1", "device", "phone", datetime.now(UTC))
        assert await store.add(patient, member) == [member]
        assert await store.remove(patient, "s1") == []
        await store.renew(patient, ())  # Redis refuses an HSET of nothing: not raised
        assert await store.members(patient) == []
    finally:
        await store.close()
