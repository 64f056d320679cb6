"""One patient cannot take the database from the others: no connection is held while the
model server embeds, waiting for a connection ends in `busy`/503 instead of a hang, and a
patient's concurrent replies and writes are capped."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from storage.changes import patient_lock_key
from tests.chatkit import Upstream, chat_send, slow_reply, until
from tests.conftest import RedisServer, gateway_process
from tests.support import Gateway, make_settings, serve_gateway
from tests.wsclient import patient_token, recv, send, session


def pull(frame_id: str = "q") -> dict[str, object]:
    return {"type": "sync.pull", "id": frame_id, "since": 0}


def thread_push(frame_id: str) -> dict[str, object]:
    mutation = {
        "mutation_id": frame_id,
        "entity": "thread",
        "op": "upsert",
        "id": str(uuid.uuid4()),
        "data": {"title": "t"},
    }
    return {"type": "sync.push", "id": frame_id, "mutations": [mutation]}


@pytest.mark.parametrize("chat_gateway", [{"db_pool_max": 1}], indirect=True)
async def test_a_slow_embedding_holds_no_connection(
    chat_gateway: Gateway, upstream: Upstream
) -> None:
    upstream.behaviour.embedding_delay_s = 2.0
    async with (
        session(chat_gateway.ws_url, patient_token()) as (talker, _),
        session(chat_gateway.ws_url, patient_token()) as (other, _),
    ):
        await send(talker, chat_send(uuid.uuid4(), "A question the model server is slow on"))
        assert (await recv(talker))["type"] == "ack"  # stored; the embedding is on its way
        started = time.monotonic()
        await send(other, pull())
        assert (await recv(other))["type"] == "sync.changes"
        assert time.monotonic() - started < 1.0  # the one connection was free


@pytest.mark.parametrize(
    "gateway", [{"db_pool_max": 1, "db_acquire_timeout_s": 0.3}], indirect=True
)
async def test_waiting_for_a_connection_ends_in_busy_not_a_hang(gateway: Gateway) -> None:
    token = patient_token()
    async with session(gateway.ws_url, token) as (ws, _):
        async with gateway.services.db.acquire():  # the pool's only connection, taken
            await send(ws, pull("q1"))
            error = (await recv(ws))["error"]
            assert (error["code"], error["ref"], error["retryable"]) == ("busy", "q1", True)
            async with httpx.AsyncClient(base_url=gateway.url) as http:
                response = await http.get("/sync/", headers={"Authorization": f"Bearer {token}"})
                assert response.status_code == 503 and response.headers["Retry-After"] == "1"
        await send(ws, pull("q2"))
        assert (await recv(ws))["type"] == "sync.changes"


@pytest.mark.parametrize("chat_gateway", [{"max_replies_per_patient": 1}], indirect=True)
async def test_a_patients_concurrent_replies_are_capped(
    chat_gateway: Gateway, upstream: Upstream
) -> None:
    slow_reply(upstream.behaviour, tokens=40, delay_s=0.02)
    patient = uuid.uuid4()
    async with (
        session(chat_gateway.ws_url, patient_token(patient)) as (ws, _),
        session(chat_gateway.ws_url, patient_token()) as (someone_else, _),
    ):
        await send(ws, chat_send(uuid.uuid4(), "first", "c1"))
        await until(ws, "chat.delta")
        await send(ws, chat_send(uuid.uuid4(), "second, in another thread", "c2"))
        _, error = await until(ws, "error")
        assert (error["error"]["code"], error["error"]["ref"]) == ("busy", "c2")
        assert "as many replies as allowed" in error["error"]["message"]
        await send(someone_else, chat_send(uuid.uuid4(), "another patient is not held up"))
        assert (await recv(someone_else))["type"] == "ack"
        await until(ws, "chat.done")
        await send(ws, chat_send(uuid.uuid4(), "third, after the first ended", "c3"))
        _, ack = await until(ws, "ack")
        assert ack["ref"] == "c3"
        for socket in (ws, someone_else):  # read to the end, so both close at once
            await until(socket, "chat.done")


@pytest.mark.parametrize("gateway", [{"max_writes_per_patient": 1}], indirect=True)
async def test_a_patients_concurrent_writes_are_capped(
    gateway: Gateway, db: asyncpg.Connection
) -> None:
    patient = uuid.uuid4()
    token = patient_token(patient)
    async with (
        session(gateway.ws_url, patient_token(patient, "phone")) as (phone, _),
        session(gateway.ws_url, patient_token(patient, "tablet")) as (tablet, _),
    ):
        # The patient's write lock held elsewhere: the phone's push waits for it, in flight.
        await db.execute("SELECT pg_advisory_lock($1)", patient_lock_key(patient))
        try:
            await send(phone, thread_push("p1"))
            await send(tablet, thread_push("p2"))  # a second write of the same patient
            error = (await recv(tablet))["error"]
            assert (error["code"], error["ref"], error["retryable"]) == ("busy", "p2", True)
            async with httpx.AsyncClient(base_url=gateway.url) as http:
                body = {
                    "client_id": "web",
                    "threads": [{"id": str(uuid.uuid4()), "operation": "insert"}],
                }
                headers = {"Authorization": f"Bearer {token}"}
                refused = await http.post("/sync/", json=body, headers=headers)
                assert refused.status_code == 429 and refused.json()["error"]["code"] == "busy"
        finally:
            await db.execute("SELECT pg_advisory_unlock($1)", patient_lock_key(patient))
        while (ack := await recv(phone))["type"] != "sync.ack":
            pass  # the write's sync.delta may come first
        assert ack["applied"] == ["p1"]
        await send(tablet, thread_push("p3"))  # the first is written: room again
        while (frame := await recv(tablet))["type"] != "sync.ack":
            pass
        assert frame["applied"] == ["p3"]


async def test_a_patients_sockets_are_capped_across_processes(
    database_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    patient = uuid.uuid4()
    settings = make_settings(redis_url=redis_server.url, max_sockets_per_patient=3)
    env = {"MAX_SOCKETS_PER_PATIENT": "3"}
    async with (
        serve_gateway(settings, database_url) as here,
        gateway_process(database_url, redis_server.url, tmp_path / "b.log", **env) as (_, there),
        session(here.ws_url, patient_token(patient, "headset")),
        session(here.ws_url, patient_token(patient, "phone")) as (phone, _),
        session(there, patient_token(patient, "tablet")),
        session(there, patient_token(uuid.uuid4(), "other")),  # another patient's: not counted
    ):
        async with session(there, patient_token(patient, "fourth")) as (fourth, _):
            error = (await recv(fourth))["error"]
            assert error["code"] == "rate_limited" and "MAX_SOCKETS_PER_PATIENT" in error["message"]
            with pytest.raises(ConnectionClosed) as closed:
                await fourth.recv()
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
                1008,
                "too many sockets for this patient",
            )
        await phone.close()  # a place frees up: the next socket stays
        await eventually_accepted(here.ws_url, patient_token(patient, "laptop"))


async def eventually_accepted(ws_url: str, token: str) -> None:
    """A socket opens and stays open (the place a closed socket left takes a moment to be
    seen on every process)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        async with session(ws_url, token) as (ws, _):
            await send(ws, pull("after"))
            if (await recv(ws))["type"] == "sync.changes":
                return
    raise AssertionError("no socket was accepted within 5 s")


@pytest.mark.parametrize("gateway", [{"rest_requests_per_s": 0.01, "rest_burst": 5}], indirect=True)
async def test_rest_is_rate_limited_per_token(gateway: Gateway) -> None:
    patient = uuid.uuid4()
    flooding, calm = patient_token(patient, "phone"), patient_token(uuid.uuid4(), "tablet")
    async with httpx.AsyncClient(base_url=gateway.url) as http:

        async def get(token: str) -> httpx.Response:
            return await http.get("/sync/", headers={"Authorization": f"Bearer {token}"})

        statuses = [(await get(flooding)).status_code for _ in range(5)]
        assert statuses == [200] * 5
        started = time.monotonic()
        refused = await get(flooding)
        # Answered after its Retry-After: a client retrying at once cannot keep the
        # gateway busy refusing it.
        assert time.monotonic() - started >= 1.0
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
        assert refused.headers["retry-after"] == "1"
        assert (await get(calm)).status_code == 200  # another token is unaffected
        assert (await http.get("/healthz")).status_code == 200  # no token: not counted here
