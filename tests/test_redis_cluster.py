"""Fan-out, sync and presence across gateway processes through a real Redis Cluster
(sharded pub/sub), and recovery when a master is killed and its replica takes over."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from redis.crc import key_slot
from websockets.asyncio.client import ClientConnection

from gateway.realtime.broker.cluster import ClusterBroker
from gateway.realtime.hub import envelope, patient_topic
from protocol.codec import encode
from tests.conftest import gateway_process
from tests.rediscluster import RedisClusterNodes
from tests.support import (
    TIMEOUT_S,
    Gateway,
    chat_delta,
    eventually,
    make_settings,
    serve_gateway,
)
from tests.wsclient import (
    expect_presence,
    expect_silence,
    patient_token,
    recv,
    send,
    session,
    thread_upsert,
)


@pytest.fixture
async def cluster_process(
    database_url: str, redis_cluster: RedisClusterNodes, tmp_path: Path
) -> AsyncIterator[str]:
    """A gateway process on the cluster; yields its WebSocket URL."""
    async with gateway_process(database_url, redis_cluster.url, tmp_path / "b.log") as (_, url):
        yield url


@pytest.fixture
async def gateway_on_cluster(
    database_url: str, redis_cluster: RedisClusterNodes
) -> AsyncIterator[Gateway]:
    """The app under uvicorn in this process, its REDIS_URL the cluster."""
    async with serve_gateway(make_settings(redis_url=redis_cluster.url), database_url) as gateway:
        yield gateway


def patients_on_every_master(cluster: RedisClusterNodes, each: int) -> list[uuid.UUID]:
    """`each` patients whose topics live on each master."""
    chosen: dict[int, list[uuid.UUID]] = {port: [] for port in cluster.masters()}
    while any(len(patients) < each for patients in chosen.values()):
        patient = uuid.uuid4()
        on = chosen[cluster.master_of(patient_topic(patient))]
        if len(on) < each:
            on.append(patient)
    return [patient for patients in chosen.values() for patient in patients]


async def acked(ws: ClientConnection, ref: str) -> dict[str, Any]:
    while True:
        frame = await recv(ws, skip=("presence", "sync.delta", "sync.version"))
        if frame.get("ref") == ref:
            return frame


async def test_frames_reach_each_patients_sockets_on_both_processes_through_their_shard(
    gateway_on_cluster: Gateway, redis_cluster: RedisClusterNodes, cluster_process: str
) -> None:
    patients = patients_on_every_master(redis_cluster, 2)
    first = gateway_on_cluster
    async with AsyncExitStack() as stack:
        sockets = []
        for patient in patients:
            for device, url in (("a", first.ws_url), ("b", cluster_process)):
                token = patient_token(patient, device)
                ws, _ = await stack.enter_async_context(session(url, token))
                sockets.append((patient, ws))
        for patient in patients:
            topic = patient_topic(patient)
            # Sharded: both processes subscribed at the topic's master, none classically.
            assert await redis_cluster.shard_subscribers(topic) == 2
            assert await redis_cluster.classic_subscribers(topic) == 0
            for seq in range(20):
                await first.services.hub.publish(topic, chat_delta(patient, seq))
        for patient, ws in sockets:
            frames = [await recv(ws) for _ in range(20)]
            assert [(f["patient_id"], f["seq"]) for f in frames] == [
                (str(patient), seq) for seq in range(20)
            ]
            await expect_silence(ws, seconds=0.05)


async def test_a_push_on_one_process_reaches_the_other_and_presence_spans_them(
    gateway_on_cluster: Gateway, redis_cluster: RedisClusterNodes, cluster_process: str
) -> None:
    patient, thread = uuid.uuid4(), str(uuid.uuid4())
    first = gateway_on_cluster
    async with session(first.ws_url, patient_token(patient, "headset")) as (a, _):
        await expect_presence(a, ["headset"])
        async with session(cluster_process, patient_token(patient, "phone")) as (b, _):
            await expect_presence(a, ["headset", "phone"])
            await expect_presence(b, ["headset", "phone"])
            await send(a, thread_upsert(1, thread, "first"))
            delta = await recv(b, skip=("presence",))
            assert delta["type"] == "sync.delta" and delta["version"] == 1
            assert delta["changes"][0]["data"]["title"] == "first"
        await expect_presence(a, ["headset"])


async def test_the_last_socket_of_a_patient_releases_its_shard_subscription(
    gateway_on_cluster: Gateway, redis_cluster: RedisClusterNodes
) -> None:
    patient = uuid.uuid4()
    topic = patient_topic(patient)
    gateway = gateway_on_cluster
    async with session(gateway.ws_url, patient_token(patient, "a")):
        async with session(gateway.ws_url, patient_token(patient, "b")):
            assert await redis_cluster.shard_subscribers(topic) == 1
        assert await redis_cluster.shard_subscribers(topic) == 1

    async def released() -> bool:
        return await redis_cluster.shard_subscribers(topic) == 0

    await eventually(released, what="the last socket to unsubscribe")


async def test_a_topic_whose_slot_moves_to_another_master_follows_it(
    gateway_on_cluster: Gateway, redis_cluster: RedisClusterNodes
) -> None:
    patient = uuid.uuid4()
    topic = patient_topic(patient)
    gateway = gateway_on_cluster
    # A publisher that is not subscribed to the topic: nothing tells it of the move
    # until the old master answers its next publish MOVED.
    bystander = ClusterBroker(redis_cluster.url)
    async with session(gateway.ws_url, patient_token(patient)) as (ws, ready):
        await gateway.services.hub.publish(topic, chat_delta(patient, 0))
        assert (await recv(ws))["seq"] == 0
        await bystander.publish(topic, envelope("chat.delta", encode(chat_delta(patient, 1))))
        assert (await recv(ws))["seq"] == 1
        source = redis_cluster.master_of(topic)
        target = next(port for port in redis_cluster.masters() if port != source)
        await asyncio.to_thread(redis_cluster.move_slot, key_slot(topic.encode()), target)

        # The old master dropped the subscription; the process subscribed at the new
        # one and tells the device to check its version (messages may have been missed).
        notice = await recv(ws)
        assert notice == {
            "type": "sync.version",
            "patient_id": str(patient),
            "version": ready["sync_version"],
        }
        assert await redis_cluster.shard_subscribers(topic) == 1  # at the new master
        await gateway.services.hub.publish(topic, chat_delta(patient, 2))
        assert (await recv(ws))["seq"] == 2
        try:
            await bystander.publish(topic, envelope("chat.delta", encode(chat_delta(patient, 3))))
        finally:
            await bystander.close()
        assert (await recv(ws))["seq"] == 3


async def test_publishes_refused_together_after_a_move_share_one_read_of_the_slot_map(
    redis_cluster: RedisClusterNodes,
) -> None:
    topic = patient_topic(uuid.uuid4())
    publisher = ClusterBroker(redis_cluster.url)
    try:
        await publisher.publish(topic, b"before")  # reads the map
        source = redis_cluster.master_of(topic)
        target = next(port for port in redis_cluster.masters() if port != source)
        await asyncio.to_thread(redis_cluster.move_slot, key_slot(topic.encode()), target)
        before = redis_cluster.slot_map_reads()
        # Twenty writes answered MOVED at once: each goes again to the new master...
        await asyncio.gather(*(publisher.publish(topic, b"after") for _ in range(20)))
        # ...after one read of the map between them, not twenty.
        assert redis_cluster.slot_map_reads() - before <= 2
    finally:
        await publisher.close()


async def test_a_killed_master_fails_over_and_its_patients_devices_catch_up(
    database_url: str, tmp_path: Path
) -> None:
    cluster = RedisClusterNodes()  # its own: this test breaks one
    await asyncio.to_thread(cluster.start)
    try:
        patient, bystander = patients_on_every_master(cluster, 1)[:2]
        doomed = cluster.master_of(patient_topic(patient))
        thread = str(uuid.uuid4())
        settings = make_settings(redis_url=cluster.url)
        async with (
            serve_gateway(settings, database_url) as first,
            gateway_process(database_url, cluster.url, tmp_path / "b.log") as (_, second),
            session(first.ws_url, patient_token(patient, "headset")) as (headset, ready),
            session(second, patient_token(patient, "phone")) as (phone, _),
            session(first.ws_url, patient_token(bystander, "headset")) as (other, _),
        ):
            await send(phone, thread_upsert(1, thread, "before"))
            assert (await recv(headset, skip=("presence",)))["version"] == 1

            cluster.kill(doomed)
            # Written while the shard is down: stored and acknowledged, not fanned out.
            await send(phone, thread_upsert(2, thread, "during"))
            assert (await acked(phone, "p2"))["type"] == "sync.ack"
            await cluster.wait_failed_over(doomed)

            # The headset's process resubscribed at the new master and says what the
            # latest version is; the device pulls what it missed.
            notice = await recv(headset, timeout=TIMEOUT_S * 2, skip=("presence",))
            assert notice == {"type": "sync.version", "patient_id": str(patient), "version": 2}
            # The phone's process lost its link to that master too, and has found the new one.
            notice = await recv(phone, timeout=TIMEOUT_S * 2, skip=("presence",))
            assert notice == {"type": "sync.version", "patient_id": str(patient), "version": 2}
            # Live again through the promoted replica.
            await send(phone, thread_upsert(3, thread, "after"))
            delta = await recv(headset, skip=("presence", "sync.version"))
            assert (delta["type"], delta["version"]) == ("sync.delta", 3)
            assert delta["changes"][0]["data"]["title"] == "after"
            await expect_silence(other)  # its shard lost nothing: not told to catch up
    finally:
        await asyncio.to_thread(cluster.stop)
