"""Fan-out in one process (memory broker): delivery, isolation, order, slow consumers,
presence of the drain."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from gateway.realtime.hub import patient_topic
from tests.support import TIMEOUT_S, Gateway, chat_delta, eventually, sample
from tests.test_heartbeat import RawSocket
from tests.wsclient import (
    expect_close,
    expect_presence,
    expect_silence,
    open_socket,
    patient_token,
    recv,
    session,
)


async def test_a_patients_frames_reach_all_their_sockets_in_order_and_no_one_else(
    gateway: Gateway,
) -> None:
    patient, other = uuid.uuid4(), uuid.uuid4()
    async with (
        session(gateway.ws_url, patient_token(patient, "headset")) as (headset, _),
        session(gateway.ws_url, patient_token(patient, "phone")) as (phone, _),
        session(gateway.ws_url, patient_token(other, "phone")) as (stranger, _),
    ):
        for seq in range(50):
            await gateway.services.hub.publish(patient_topic(patient), chat_delta(patient, seq))
        for ws in (headset, phone):
            seqs = [(await recv(ws))["seq"] for _ in range(50)]
            assert seqs == list(range(50))
            await expect_silence(ws)  # exactly once: nothing more follows
        await expect_silence(stranger)


@pytest.mark.parametrize("gateway", [{"send_queue_frames": 64}], indirect=True)
async def test_a_socket_that_stops_reading_is_closed_1013_and_others_keep_up(
    gateway: Gateway,
) -> None:
    patient = uuid.uuid4()
    big = "x" * 60_000
    # max_queue=1: the client stops taking frames off the wire once one is waiting.
    async with (
        session(gateway.ws_url, patient_token(patient, "slow"), max_queue=1) as (slow, _),
        session(gateway.ws_url, patient_token(patient, "fast")) as (fast, _),
    ):
        received = 0

        async def read_fast() -> None:
            nonlocal received
            while received < 400:
                await recv(fast)
                received += 1

        reader = asyncio.create_task(read_fast())
        for seq in range(400):
            await gateway.services.hub.publish(
                patient_topic(patient), chat_delta(patient, seq, big)
            )
            await asyncio.sleep(0)  # let the sockets' send loops run between publishes
        async with asyncio.timeout(TIMEOUT_S):
            await reader
        assert received == 400
        assert await expect_close(slow) == 1013
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert sample((await http.get("/metrics")).text, "ws_queue_full_closes_total") >= 1


async def test_drain_sends_reconnect_then_closes_1012(gateway: Gateway) -> None:
    async with session(gateway.ws_url, patient_token()) as (ws, _):
        gateway.server.handle_exit(15, None)  # what SIGTERM does
        frame = await recv(ws)
        assert frame["type"] == "reconnect"
        assert frame["reason"] == "server_restart" and 0 <= frame["after_ms"] < 2000
        assert await expect_close(ws) == 1012


async def test_while_draining_new_sockets_and_readiness_get_503(gateway: Gateway) -> None:
    gateway.services.realtime.draining = True  # the drain's first step
    async with httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT_S) as http:
        response = await http.get("/readyz")
        assert response.status_code == 503 and response.json()["status"] == "draining"
        assert (await http.get("/healthz")).status_code == 200
    with pytest.raises(InvalidStatus) as refused:
        async with open_socket(gateway.ws_url, patient_token()):
            pass
    assert refused.value.response.status_code == 503


async def test_presence_lists_the_patients_devices_as_they_come_and_go(gateway: Gateway) -> None:
    patient = uuid.uuid4()
    async with session(gateway.ws_url, patient_token(patient, "phone")) as (phone, _):
        first = await expect_presence(phone, ["phone"])
        assert first == {
            "type": "presence",
            "patient_id": str(patient),
            "devices": ["phone"],
            "observers": [],
        }
        async with session(gateway.ws_url, patient_token(patient, "headset")) as (headset, _):
            await expect_presence(phone, ["headset", "phone"])
            await expect_presence(headset, ["headset", "phone"])
        await expect_presence(phone, ["phone"])
    async with session(gateway.ws_url, patient_token(uuid.uuid4(), "tablet")) as (other, _):
        frame = await expect_presence(other, ["tablet"])  # another patient's devices stay apart
        assert frame["devices"] == ["tablet"]


@pytest.mark.parametrize("gateway", [{"max_sockets_per_patient": 30}], indirect=True)
async def test_a_crowd_joining_costs_each_device_a_couple_of_presence_frames(
    gateway: Gateway,
) -> None:
    """At most one presence frame per patient per second: 20 devices joining at once
    are one frame now and one with all of them after the second, not 20 each."""
    patient = uuid.uuid4()
    async with session(gateway.ws_url, patient_token(patient, "first")) as (first, _):
        await expect_presence(first, ["first"])
        crowd = [f"d{n:02}" for n in range(20)]
        async with AsyncExitStack() as stack:
            await asyncio.gather(
                *(
                    stack.enter_async_context(session(gateway.ws_url, patient_token(patient, d)))
                    for d in crowd
                )
            )
            frames: list[dict[str, Any]] = []
            async with asyncio.timeout(TIMEOUT_S):
                while not frames or len(frames[-1]["devices"]) < 21:
                    frame = await recv(first, skip=())
                    if frame["type"] == "presence":
                        frames.append(frame)
            assert frames[-1]["devices"] == sorted(["first", *crowd])
            assert len(frames) <= 3
            await expect_silence(first, seconds=1.2, skip=())  # and nothing more after


@pytest.mark.parametrize("gateway", [{"send_queue_frames": 64, "heartbeat_s": 0.5}], indirect=True)
async def test_a_peer_that_neither_reads_nor_answers_is_let_go(gateway: Gateway) -> None:
    """After its 1013 close cannot be delivered, the session ends anyway: nothing of it
    stays in the hub, the session set or the open-socket gauge."""
    patient = uuid.uuid4()
    stalled = await RawSocket.open(gateway.ws_url, patient_token(patient, "stalled"))
    try:

        async def registered() -> bool:
            return len(gateway.services.hub.listeners(patient_topic(patient))) == 1

        await eventually(registered, what="the stalled socket's session")
        big = "x" * 60_000
        for seq in range(400):  # far more than the socket buffers hold
            await gateway.services.hub.publish(
                patient_topic(patient), chat_delta(patient, seq, big)
            )
            await asyncio.sleep(0)

        async def let_go() -> bool:
            # The only socket of this test's gateway.
            hub, realtime = gateway.services.hub, gateway.services.realtime
            return not hub.listeners(patient_topic(patient)) and not realtime.sockets

        await eventually(let_go, what="the stalled session to end")
    finally:
        stalled.writer.close()
