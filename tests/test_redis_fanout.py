"""Fan-out across gateway processes through a real Redis, and recovery after Redis restarts."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from gateway.realtime.broker import BrokerUnavailable
from gateway.realtime.broker.redis import RedisBroker
from gateway.realtime.hub import Hub, envelope, patient_topic
from protocol.codec import encode
from protocol.frames import SyncVersion
from tests.conftest import RedisServer
from tests.support import (
    TIMEOUT_S,
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


async def test_frames_reach_every_socket_of_the_patient_on_both_processes_once_in_order(
    database_url: str, redis_server: RedisServer, second_process: str
) -> None:
    patient, other = uuid.uuid4(), uuid.uuid4()
    settings = make_settings(redis_url=redis_server.url)
    async with serve_gateway(settings, database_url) as first:
        async with (
            session(first.ws_url, patient_token(patient, "a1")) as (a1, _),
            session(first.ws_url, patient_token(patient, "a2")) as (a2, _),
            session(second_process, patient_token(patient, "b1")) as (b1, _),
            session(second_process, patient_token(patient, "b2")) as (b2, _),
            session(second_process, patient_token(other, "b3")) as (stranger, _),
        ):
            # Published by the first process's hub...
            for seq in range(30):
                await first.services.hub.publish(patient_topic(patient), chat_delta(patient, seq))
            # ...and by another publisher on the same Redis, as the second process's hub does.
            publisher = RedisBroker(redis_server.url)
            try:
                for seq in range(30, 60):
                    frame = chat_delta(patient, seq)
                    await publisher.publish(
                        patient_topic(patient), envelope(frame.type, encode(frame))
                    )
            finally:
                await publisher.close()
            for ws in (a1, a2, b1, b2):
                assert [(await recv(ws))["seq"] for _ in range(60)] == list(range(60))
                await expect_silence(ws)
            await expect_silence(stranger)


async def test_delivery_resumes_after_redis_restarts(
    database_url: str, redis_server: RedisServer
) -> None:
    patient = uuid.uuid4()
    settings = make_settings(redis_url=redis_server.url)
    async with serve_gateway(settings, database_url) as gateway:
        async with session(gateway.ws_url, patient_token(patient)) as (ws, ready):
            topic = patient_topic(patient)
            await gateway.services.hub.publish(topic, chat_delta(patient, 0))
            assert (await recv(ws))["seq"] == 0

            redis_server.stop()
            with pytest.raises(BrokerUnavailable):
                await gateway.services.hub.publish(topic, chat_delta(patient, 1))
            redis_server.start()
            await redis_server.wait_ready()

            # The link came back: the socket is told the latest version, to pull if behind.
            notice = await recv(ws, timeout=TIMEOUT_S)
            assert notice == {
                "type": "sync.version",
                "patient_id": str(patient),
                "version": ready["sync_version"],
            }
            await gateway.services.hub.publish(topic, chat_delta(patient, 2))
            assert (await recv(ws))["seq"] == 2


async def test_writes_whose_publish_failed_while_devices_stayed_connected_are_caught_up(
    database_url: str, redis_server: RedisServer
) -> None:
    # Redis holds every publish for a while (CLIENT PAUSE WRITE): the writes' publishes
    # time out and are lost, yet the other devices' link never drops, so only the
    # writing process knows.
    patients = [uuid.uuid4() for _ in range(3)]
    settings = make_settings(redis_url=redis_server.url)
    redis = Redis.from_url(redis_server.url)
    try:
        async with serve_gateway(settings, database_url) as gateway, AsyncExitStack() as stack:
            devices = []
            for patient in patients:
                phone, _ = await stack.enter_async_context(
                    session(gateway.ws_url, patient_token(patient, "phone"))
                )
                headset, ready = await stack.enter_async_context(
                    session(gateway.ws_url, patient_token(patient, "headset"))
                )
                devices.append((patient, phone, headset, ready["sync_version"]))
            await redis.client_pause(3000, all=False)  # WRITE: PUBLISH waits
            for _, phone, _, _ in devices:
                await send(phone, thread_upsert(1, str(uuid.uuid4()), "while paused"))
            for patient, phone, headset, version in devices:
                acked = await recv(phone, timeout=TIMEOUT_S, skip=("presence",))
                assert (acked["type"], acked["ref"]) == ("sync.ack", "p1")  # stored
                # Once Redis takes publishes again the headset is told to catch up.
                notice = await recv(headset, timeout=TIMEOUT_S, skip=("presence",))
                expected = {"type": "sync.version", "patient_id": str(patient)}
                assert notice == {**expected, "version": version + 1}
            _, phone, headset, _ = devices[0]
            await send(phone, thread_upsert(2, str(uuid.uuid4()), "after"))
            live = await recv(headset, skip=("presence", "sync.version"))
            assert (live["type"], live["changes"][0]["data"]["title"]) == ("sync.delta", "after")
    finally:
        await redis.aclose()


async def test_while_redis_is_down_announcements_probe_it_with_one_topic_a_round(
    redis_server: RedisServer,
) -> None:
    hub = Hub(RedisBroker(redis_server.url))
    await hub.start()

    def failures() -> float:
        value = REGISTRY.get_sample_value("broker_publish_failures_total", {"broker": "redis"})
        return value or 0.0

    try:
        redis_server.stop()
        before = failures()
        for n in range(20):
            patient = uuid.UUID(int=n)
            hub.announce(patient_topic(patient), SyncVersion(patient_id=patient, version=1))

        async def retried_thrice() -> bool:
            return failures() >= before + 3

        await eventually(retried_thrice, what="three rounds of announcements")
        # One topic a round (rounds 50 ms, 100 ms, 200 ms ... apart), not all 20 each time.
        assert failures() < before + 10
    finally:
        await hub.close()


async def test_presence_spans_gateway_processes(
    database_url: str, redis_server: RedisServer, second_process: str
) -> None:
    patient = uuid.uuid4()
    settings = make_settings(redis_url=redis_server.url)
    async with serve_gateway(settings, database_url) as first:
        async with session(first.ws_url, patient_token(patient, "headset")) as (headset, _):
            await expect_presence(headset, ["headset"])
            async with session(second_process, patient_token(patient, "phone")) as (phone, _):
                await expect_presence(headset, ["headset", "phone"])
                await expect_presence(phone, ["headset", "phone"])
            await expect_presence(headset, ["headset"])


async def test_one_redis_subscription_per_topic_released_by_the_last_socket(
    database_url: str, redis_server: RedisServer
) -> None:
    patient = uuid.uuid4()
    topic = patient_topic(patient)
    redis = Redis.from_url(redis_server.url)

    async def subscribers() -> int:
        counts = await redis.pubsub_numsub(topic)
        return int(counts[0][1])

    try:
        async with serve_gateway(make_settings(redis_url=redis_server.url), database_url) as gw:
            async with session(gw.ws_url, patient_token(patient, "a")):
                async with session(gw.ws_url, patient_token(patient, "b")):
                    assert await subscribers() == 1  # two sockets, one subscription
                assert await subscribers() == 1

            async def released() -> bool:
                return await subscribers() == 0

            await eventually(released, what="the last socket to unsubscribe")
    finally:
        await redis.aclose()
