"""A device that connects while a reply of its patient streams, on any process, gets the
reply's text so far (`chat.resume`) right after `session.ready`, then the live deltas
after it: no gap, no repeat. A reply streaming while Redis is down finishes all the same
and reaches the other process's devices through sync once Redis is back."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from tests.chatkit import Upstream, chat_send, messages_of, slow_reply, until
from tests.conftest import RedisServer, gateway_process
from tests.support import eventually, make_settings, serve_gateway
from tests.wsclient import patient_token, recv, send, session


async def resumed_text(ws: Any) -> str:
    """After session.ready: the resume, then every later delta of it, exactly once."""
    resume = await recv(ws)
    assert resume["type"] == "chat.resume", resume
    assert resume["seq"] >= 4
    frames, _ = await until(ws, "chat.done")
    later = [f for f in frames if f["type"] == "chat.delta"]
    assert [d["seq"] for d in later] == list(
        range(resume["seq"] + 1, resume["seq"] + 1 + len(later))
    )
    return str(resume["text"]) + "".join(d["delta"] for d in later)


@pytest.mark.parametrize("where", ["same process", "other process"])
async def test_a_device_connecting_mid_reply_resumes_it(
    where: str,
    database_url: str,
    redis_server: RedisServer,
    upstream: Upstream,
    db: asyncpg.Connection,
    tmp_path: Any,
) -> None:
    slow_reply(upstream.behaviour, tokens=60, delay_s=0.02)
    patient, thread = uuid.uuid4(), uuid.uuid4()
    settings = make_settings(redis_url=redis_server.url, openai_base_url=upstream.url)
    async with (
        serve_gateway(settings, database_url) as here,
        gateway_process(database_url, redis_server.url, tmp_path / "b.log") as (_, there),
        session(here.ws_url, patient_token(patient, "headset")) as (headset, _),
    ):
        await send(headset, chat_send(thread, "Tell me about pacing"))
        for _ in range(5):
            await until(headset, "chat.delta")
        url = here.ws_url if where == "same process" else there
        async with session(url, patient_token(patient, "phone")) as (phone, _):
            text = await resumed_text(phone)
        await until(headset, "chat.done")
    [_, reply] = await messages_of(db, thread)
    assert text == reply["content"] == "".join(upstream.behaviour.tokens)


async def test_no_resume_when_nothing_streams(database_url: str, upstream: Upstream) -> None:
    patient = uuid.uuid4()
    settings = make_settings(openai_base_url=upstream.url)
    async with (
        serve_gateway(settings, database_url) as gw,
        session(gw.ws_url, patient_token(patient, "headset")) as (headset, _),
    ):
        await send(headset, chat_send(uuid.uuid4(), "Hello"))
        await until(headset, "chat.done")
        async with session(gw.ws_url, patient_token(patient, "phone")) as (phone, _):
            await send(phone, {"type": "ping", "ts": 1})
            assert await recv(phone) == {"type": "pong", "ts": 1}  # nothing came first


async def test_a_reply_streaming_through_a_redis_outage_finishes_and_is_pulled_elsewhere(
    database_url: str,
    redis_server: RedisServer,
    second_process: str,
    upstream: Upstream,
    db: asyncpg.Connection,
) -> None:
    slow_reply(upstream.behaviour, tokens=60, delay_s=0.02)
    patient, thread = uuid.uuid4(), uuid.uuid4()
    settings = make_settings(redis_url=redis_server.url, openai_base_url=upstream.url)
    async with (
        serve_gateway(settings, database_url) as here,
        session(here.ws_url, patient_token(patient, "headset")) as (headset, _),
        session(second_process, patient_token(patient, "phone")) as (phone, ready),
    ):
        await send(headset, chat_send(thread, "Tell me about pacing"))
        await until(phone, "chat.delta")  # streaming, and reaching the other process
        redis_server.stop()

        async def reply_stored() -> bool:
            rows = await messages_of(db, thread)
            return len(rows) == 2 and rows[1]["finish_reason"] is not None

        await eventually(reply_stored, what="the reply to finish during the outage")
        redis_server.start()
        await redis_server.wait_ready()
        # The phone hears the link came back (sync.version) and pulls what it missed.
        while (await recv(phone))["type"] != "sync.version":
            pass
        await send(phone, {"type": "sync.pull", "id": "q", "since": ready["sync_version"]})
        while (page := await recv(phone))["type"] != "sync.changes":
            pass
    [_, reply] = await messages_of(db, thread)
    assert reply["finish_reason"] == "stop"
    assert reply["content"] == "".join(upstream.behaviour.tokens)
    pulled = [c["data"] for c in page["changes"] if c["entity"] == "message"]
    assert [m["content"] for m in pulled if m["role"] == "assistant"] == [reply["content"]]
