"""Chat beyond one socket: the reply on every socket of the patient across two gateway
processes, cancel from a device on the other process, and the original SSE route."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from tests.chatkit import (
    Upstream,
    assert_in_order,
    chat_send,
    deltas,
    messages_of,
    slow_reply,
    until,
)
from tests.conftest import RedisServer, gateway_process
from tests.support import TIMEOUT_S, Gateway, eventually, make_settings, serve_gateway
from tests.wsclient import clinician_token, patient_token, recv, send, session


async def test_the_reply_reaches_every_socket_on_both_processes_in_the_same_split(
    database_url: str,
    redis_server: RedisServer,
    second_process: str,
    upstream: Upstream,
    db: asyncpg.Connection,
) -> None:
    upstream.behaviour.tokens = [f" t{n}" for n in range(60)]
    settings = make_settings(redis_url=redis_server.url, openai_base_url=upstream.url)
    patient, thread = uuid.uuid4(), uuid.uuid4()
    async with serve_gateway(settings, database_url) as first:
        async with (
            session(first.ws_url, patient_token(patient, "headset")) as (headset, _),
            session(first.ws_url, patient_token(patient, "tablet")) as (tablet, _),
            session(second_process, patient_token(patient, "phone")) as (phone, _),
        ):
            await send(headset, chat_send(thread, "Walking helps", client_message_id="w"))
            assert (await recv(headset))["type"] == "ack"
            streams = []
            for ws in (headset, tablet, phone):
                before, done = await until(ws, "chat.done")
                kinds = [f["type"] for f in before if f["type"] != "sync.delta"]
                assert kinds[0] == "chat.message" and set(kinds[1:]) == {"chat.delta"}
                assert assert_in_order(before) == "".join(upstream.behaviour.tokens)
                streams.append(([d["delta"] for d in deltas(before)], done))
            assert streams[0] == streams[1] == streams[2]  # same split, same seq, same done
            assert streams[0][1]["finish_reason"] == "stop"
    rows = await messages_of(db, thread)
    assert [r["role"] for r in rows] == ["user", "assistant"]
    count = await db.fetchval("SELECT count(*) FROM memories WHERE patient_id = $1", patient)
    assert count == 2


async def test_cancel_from_a_device_on_the_other_process(
    database_url: str,
    redis_server: RedisServer,
    second_process: str,
    upstream: Upstream,
    db: asyncpg.Connection,
) -> None:
    slow_reply(upstream.behaviour)
    settings = make_settings(redis_url=redis_server.url, openai_base_url=upstream.url)
    patient, thread = uuid.uuid4(), uuid.uuid4()
    async with serve_gateway(settings, database_url) as first:
        async with (
            session(first.ws_url, patient_token(patient, "headset")) as (headset, _),
            session(second_process, patient_token(patient, "phone")) as (phone, _),
        ):
            await send(headset, chat_send(thread, "Long answer please"))
            ack = await recv(headset)
            _, delta = await until(phone, "chat.delta")
            cancel = {"type": "chat.cancel", "id": "stop", "response_id": ack["response_id"]}
            await send(phone, cancel)
            before, done = await until(phone, "chat.done")
            assert {"type": "ack", "ref": "stop", "stopped": True} in before
            assert done["finish_reason"] == "cancelled"
    rows = await messages_of(db, thread)
    assert rows[1]["finish_reason"] == "cancelled"
    assert len(rows[1]["content"]) < len("".join(upstream.behaviour.tokens))


async def sse_events(response: httpx.Response) -> list[tuple[str, Any]]:
    """(event name, data) for each event of a text/event-stream response."""
    events = []
    async for block in _blocks(response):
        name, data = "message", None
        for line in block.splitlines():
            key, _, value = line.partition(": ")
            if key == "event":
                name = value
            elif key == "data":
                data = orjson.loads(value)
        events.append((name, data))
    return events


async def _blocks(response: httpx.Response) -> Any:
    buffer = ""
    async for text in response.aiter_text():
        buffer += text
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            yield block


async def test_the_original_sse_route_streams_the_reply_and_the_sockets_see_it(
    chat_gateway: Gateway, upstream: Upstream, db: asyncpg.Connection
) -> None:
    patient, thread = uuid.uuid4(), uuid.uuid4()
    token = patient_token(patient)
    body = {"thread_id": str(thread), "message": "Stretches for my neck?", "svg_path": None}
    async with (
        session(chat_gateway.ws_url, patient_token(patient, "headset")) as (headset, _),
        httpx.AsyncClient(base_url=chat_gateway.url, timeout=TIMEOUT_S) as http,
    ):
        headers = {"Authorization": f"Bearer {token}"}
        async with http.stream("POST", "/chat/", json=body, headers=headers) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = await sse_events(response)
        before, done = await until(headset, "chat.done")
    assert events[-1] == ("done", {})
    contents = [data["content"] for name, data in events[:-1]]
    assert all(name == "message" for name, _ in events[:-1])
    assert "".join(contents) == "Hello, there."
    assert assert_in_order(before) == "Hello, there."
    assert before[0]["type"] == "chat.message"
    rows = await messages_of(db, thread)
    assert [(r["role"], r["content"]) for r in rows] == [
        ("user", "Stretches for my neck?"),
        ("assistant", "Hello, there."),
    ]


async def test_the_sse_route_reports_a_failed_model_before_done(
    chat_gateway: Gateway, upstream: Upstream
) -> None:
    upstream.behaviour.cut_after = 1
    body = {"thread_id": str(uuid.uuid4()), "message": "Hi"}
    headers = {"Authorization": f"Bearer {patient_token()}"}
    async with httpx.AsyncClient(base_url=chat_gateway.url, timeout=TIMEOUT_S) as http:
        async with http.stream("POST", "/chat/", json=body, headers=headers) as response:
            events = await sse_events(response)
    assert events[0] == ("message", {"content": "Hello"})
    assert events[1][0] == "error" and events[1][1]["code"] == "upstream_error"
    assert events[2] == ("done", {})


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"message": "hi"}, 422, "thread_id"),
        ({"thread_id": "nope", "message": "hi"}, 422, "thread_id"),
        ({"thread_id": str(uuid.uuid4()), "message": ""}, 422, "message"),
        ({"thread_id": str(uuid.uuid4()), "message": "hi", "svg_path": "Q"}, 422, "svg_path"),
        ({"thread_id": str(uuid.uuid4()), "message": "a\u0000b"}, 422, "message"),
        ("not json", 400, "body"),
    ],
)
async def test_bad_chat_requests_get_a_4xx_naming_the_field(
    chat_gateway: Gateway, db: asyncpg.Connection, body: Any, status: int, field: str
) -> None:
    headers = {"Authorization": f"Bearer {patient_token()}"}
    content = body.encode() if isinstance(body, str) else orjson.dumps(body)
    async with httpx.AsyncClient(base_url=chat_gateway.url, timeout=TIMEOUT_S) as http:
        response = await http.post("/chat/", content=content, headers=headers)
    assert response.status_code == status
    assert response.json()["error"]["message"].startswith(field)
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


async def test_the_sse_route_needs_a_patient_token_and_answers_busy_with_409(
    chat_gateway: Gateway, upstream: Upstream
) -> None:
    slow_reply(upstream.behaviour, tokens=30)
    patient, thread = uuid.uuid4(), uuid.uuid4()
    body = {"thread_id": str(thread), "message": "hi"}
    async with httpx.AsyncClient(base_url=chat_gateway.url, timeout=TIMEOUT_S) as http:
        assert (await http.post("/chat/", json=body)).status_code == 401
        bad = {"Authorization": "Bearer nonsense"}
        assert (await http.post("/chat/", json=body, headers=bad)).status_code == 401
        clinician = {"Authorization": f"Bearer {clinician_token()}"}
        assert (await http.post("/chat/", json=body, headers=clinician)).status_code == 403
        async with session(chat_gateway.ws_url, patient_token(patient)) as (ws, _):
            await send(ws, chat_send(thread, "First"))
            await until(ws, "chat.delta")
            headers = {"Authorization": f"Bearer {patient_token(patient)}"}
            response = await http.post("/chat/", json=body, headers=headers)
            assert response.status_code == 409
            assert response.json()["error"]["code"] == "busy"
            assert response.headers["retry-after"] == "1"


async def test_a_message_survives_its_gateway_dying_mid_reply_and_a_resend_gets_the_reply(
    database_url: str,
    redis_server: RedisServer,
    upstream: Upstream,
    db: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    slow_reply(upstream.behaviour, tokens=500)
    patient, thread = uuid.uuid4(), uuid.uuid4()
    frame = chat_send(thread, "Is this saved?", client_message_id="saved")
    env = {"OPENAI_BASE_URL": upstream.url, "REPLY_LEASE_S": "5"}
    async with gateway_process(database_url, redis_server.url, tmp_path / "a.log", **env) as (
        doomed,
        url,
    ):
        async with session(url, patient_token(patient)) as (ws, _):
            await send(ws, frame)
            assert (await recv(ws))["type"] == "ack"
            await until(ws, "chat.delta")
            doomed.kill()  # no drain, no clean-up: the reply is cut where it stands
            await doomed.wait()
    rows = await messages_of(db, thread)
    assert [(r["role"], r["content"]) for r in rows] == [("user", "Is this saved?")]

    upstream.behaviour.tokens, upstream.behaviour.token_delay_s = ["Yes."], 0.0
    settings = make_settings(redis_url=redis_server.url, openai_base_url=upstream.url)
    async with serve_gateway(settings, database_url) as survivor:
        async with session(survivor.ws_url, patient_token(patient)) as (ws, _):

            async def answered() -> bool:
                # The dead process's lease on the thread runs out after REPLY_LEASE_S.
                await send(ws, frame)
                reply = await recv(ws)
                if reply["type"] == "error":
                    assert reply["error"]["code"] == "busy"
                    return False
                assert reply["type"] == "ack" and "response_id" in reply
                return True

            await eventually(answered, timeout=TIMEOUT_S * 2, what="the lease to run out")
            before, done = await until(ws, "chat.done")
            assert assert_in_order(before) == "Yes." and done["finish_reason"] == "stop"
    rows = await messages_of(db, thread)
    assert [(r["role"], r["content"]) for r in rows] == [
        ("user", "Is this saved?"),
        ("assistant", "Yes."),
    ]
