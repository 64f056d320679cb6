"""Chat over the socket: the message stored and acknowledged, the reply streamed to every
socket of the patient and stored with both embeddings; retries, timeouts, cut streams,
cancel, busy, a sender that leaves, replays — against a local server speaking the OpenAI
wire format, through the real `openai` client."""

from __future__ import annotations

import time
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.chatkit import (
    Upstream,
    assert_in_order,
    chat_send,
    deltas,
    messages_of,
    slow_reply,
    until,
)
from tests.support import Gateway, eventually, sample
from tests.wsclient import clinician_token, expect_silence, patient_token, recv, send, session


async def memory_count(db: asyncpg.Connection, patient: uuid.UUID) -> int:
    return int(await db.fetchval("SELECT count(*) FROM memories WHERE patient_id = $1", patient))


async def test_a_message_is_stored_acknowledged_and_answered_with_both_embeddings(
    chat_gateway: Gateway, upstream: Upstream, db: asyncpg.Connection
) -> None:
    patient, thread = uuid.uuid4(), uuid.uuid4()
    async with session(chat_gateway.ws_url, patient_token(patient)) as (ws, ready):
        assert ready["providers"] == {
            "chat": "openai:gpt-4o-mini",
            "asr": "openai:whisper-1",
            "embeddings": "openai:text-embedding-3-small",
        }
        await send(
            ws, chat_send(thread, "My lower back aches after sitting", client_message_id="m1")
        )
        ack = await recv(ws)
        assert ack["type"] == "ack" and ack["ref"] == "c1"
        response_id = ack["response_id"]
        message = await recv(ws)
        assert message["type"] == "chat.message"
        assert message["message"]["role"] == "user" and message["message"]["source"] == "text"
        assert message["message"]["content"] == "My lower back aches after sitting"
        before, done = await until(ws, "chat.done")
        assert assert_in_order(before) == "Hello, there."
        assert {d["response_id"] for d in deltas(before)} == {response_id}
        assert done["response_id"] == response_id and done["finish_reason"] == "stop"
        assert done["usage"] == {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}
        # The user message's delta (thread created, message) came before the reply.
        [user_delta] = [f for f in before if f["type"] == "sync.delta"]
        assert [(c["entity"], c["version"]) for c in user_delta["changes"]] == [
            ("thread", 1),
            ("message", 2),
        ]
        reply_delta = await recv(ws)
        assert reply_delta["type"] == "sync.delta" and reply_delta["version"] == 3
        [change] = reply_delta["changes"]
        assert change["id"] == done["message_id"]
        assert change["data"]["finish_reason"] == "stop"

    rows = await messages_of(db, thread)
    assert [(r["role"], r["content"], r["finish_reason"]) for r in rows] == [
        ("user", "My lower back aches after sitting", None),
        ("assistant", "Hello, there.", "stop"),
    ]
    assert rows[1]["reply_to"] == rows[0]["id"]
    assert await memory_count(db, patient) == 2
    title = await db.fetchval("SELECT title FROM threads WHERE id = $1", thread)
    assert title == "My lower back aches after sitting"
    # The model was asked with the companion's system prompt and the message.
    [asked] = upstream.behaviour.chat_requests
    prompt: list[dict[str, str]] = asked["messages"]  # type: ignore[assignment]
    assert prompt[0]["role"] == "system" and "urgent" in prompt[0]["content"]
    assert prompt[-1] == {"role": "user", "content": "My lower back aches after sitting"}


async def test_the_prompt_carries_memories_recent_turns_and_the_body_map_region(
    chat_gateway: Gateway, upstream: Upstream
) -> None:
    patient, first_thread, thread = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with session(chat_gateway.ws_url, patient_token(patient)) as (ws, _):
        await send(ws, chat_send(first_thread, "Swimming eases my knee pain a lot", "a"))
        await until(ws, "chat.done")
        await send(ws, chat_send(thread, "Good morning", "b"))
        await until(ws, "chat.done")
        await send(ws, chat_send(thread, "My knee pain is back", "c", svg_path="M10 10 L20 20 Z"))
        await until(ws, "chat.done")
    prompt: list[dict[str, str]] = upstream.behaviour.chat_requests[-1]["messages"]  # type: ignore[assignment]
    memories = [m["content"] for m in prompt if m["content"].startswith("Things the patient")]
    assert len(memories) == 1 and "Swimming eases my knee pain a lot" in memories[0]
    turns = [(m["role"], m["content"]) for m in prompt if m["role"] != "system"]
    assert turns[:2] == [("user", "Good morning"), ("assistant", "Hello, there.")]
    assert turns[-1][0] == "user" and turns[-1][1].startswith("My knee pain is back")
    assert "M10 10 L20 20 Z" in turns[-1][1]


@pytest.mark.parametrize("chat_gateway", [{"chat_retries": 2}], indirect=True)
async def test_429_and_500_before_the_first_token_are_retried(
    chat_gateway: Gateway, upstream: Upstream, db: asyncpg.Connection
) -> None:
    upstream.behaviour.fail_with = [429, 500]
    patient, thread = uuid.uuid4(), uuid.uuid4()
    async with session(chat_gateway.ws_url, patient_token(patient)) as (ws, _):
        await send(ws, chat_send(thread, "Is heat or ice better?"))
        before, done = await until(ws, "chat.done")
    assert done["finish_reason"] == "stop"
    assert assert_in_order(before) == "Hello, there."
    assert not [f for f in before if f["type"] == "error"]
    assert len(upstream.behaviour.chat_requests) == 3
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{chat_gateway.url}/metrics")).text
    assert sample(metrics, "chat_upstream_errors_total", kind="rate_limited") >= 1
    assert sample(metrics, "chat_upstream_errors_total", kind="server_error") >= 1
    assert sample(metrics, "chat_first_token_added_seconds_count") >= 1


@pytest.mark.parametrize("chat_gateway", [{"chat_retries": 3}], indirect=True)
async def test_a_client_error_from_the_model_is_not_retried_nor_retryable(
    chat_gateway: Gateway, upstream: Upstream
) -> None:
    upstream.behaviour.fail_with = [400]
    async with session(chat_gateway.ws_url, patient_token()) as (ws, _):
        await send(ws, chat_send(uuid.uuid4(), "hi"))
        before, done = await until(ws, "chat.done")
    [error] = [f["error"] for f in before if f["type"] == "error"]
    assert error["code"] == "upstream_error" and "400" in error["message"]
    assert error["retryable"] is False  # a resend would be refused the same way
    assert done["finish_reason"] == "error"
    assert len(upstream.behaviour.chat_requests) == 1


@pytest.mark.parametrize("chat_gateway", [{"chat_retries": 1}], indirect=True)
async def test_a_model_that_keeps_failing_ends_the_reply_and_a_replay_asks_again(
    chat_gateway: Gateway, upstream: Upstream, db: asyncpg.Connection
) -> None:
    upstream.behaviour.fail_with = [500, 503]
    patient, thread = uuid.uuid4(), uuid.uuid4()
    frame = chat_send(thread, "Can I take a walk today?", client_message_id="walk")
    async with session(chat_gateway.ws_url, patient_token(patient)) as (ws, _):
        await send(ws, frame)
        before, done = await until(ws, "chat.done")
        [message] = [f["message"] for f in before if f["type"] == "chat.message"]
        [error] = [f["error"] for f in before if f["type"] == "error"]
        assert error["code"] == "upstream_error" and error["ref"] == "c1" and error["retryable"]
        assert done["finish_reason"] == "error" and not deltas(before)
        assert len(upstream.behaviour.chat_requests) == 2
        await until(ws, "sync.delta")  # the failed reply's own change
        # The message was kept; sending it again (same client_message_id) asks again,
        # and the sender sees the same message (not a second one) before the reply.
        await send(ws, frame)
        ack = await recv(ws)
        assert ack["type"] == "ack" and "response_id" in ack
        before, done = await until(ws, "chat.done")
        assert [f["message"] for f in before if f["type"] == "chat.message"] == [message]
        assert done["finish_reason"] == "stop" and assert_in_order(before) == "Hello, there."
        await until(ws, "sync.delta")  # the answer's own change
        # Once answered, a replay is acknowledged and nothing more happens.
        await send(ws, frame)
        ack = await recv(ws)
        assert ack == {"type": "ack", "ref": "c1"}
        await expect_silence(ws)
    rows = await messages_of(db, thread)
    assert [(r["role"], r["content"], r["finish_reason"]) for r in rows] == [
        ("user", "Can I take a walk today?", None),
        ("assistant", "", "error"),
        ("assistant", "Hello, there.", "stop"),
    ]


@pytest.mark.parametrize("chat_gateway", [{"chat_retries": 3}], indirect=True)
async def test_a_stream_cut_midway_keeps_the_partial_reply_and_is_not_retried(
    chat_gateway: Gateway, upstream: Upstream, db: asyncpg.Connection
) -> None:
    upstream.behaviour.cut_after = 2
    patient, thread = uuid.uuid4(), uuid.uuid4()
    async with session(chat_gateway.ws_url, patient_token(patient)) as (ws, _):
        await send(ws, chat_send(thread, "Tell me about pacing"))
        before, done = await until(ws, "chat.done")
    assert assert_in_order(before) == "Hello,"
    [error] = [f["error"] for f in before if f["type"] == "error"]
    assert error["code"] == "upstream_error"
    assert done["finish_reason"] == "error"
    assert len(upstream.behaviour.chat_requests) == 1
    rows = await messages_of(db, thread)
    assert [(r["role"], r["content"], r["finish_reason"]) for r in rows][1] == (
        "assistant",
        "Hello,",
        "error",
    )
    assert await memory_count(db, patient) == 2  # the partial reply is a memory too


@pytest.mark.parametrize(
    ("chat_gateway", "slow", "expected"),
    [
        ({"chat_first_token_timeout_s": 0.3, "chat_retries": 0}, "first_token_delay_s", ""),
        ({"chat_idle_timeout_s": 0.3}, "token_delay_s", "Hello"),
    ],
    indirect=["chat_gateway"],
)
async def test_a_silent_model_times_out(
    chat_gateway: Gateway,
    upstream: Upstream,
    db: asyncpg.Connection,
    slow: str,
    expected: str,
) -> None:
    setattr(upstream.behaviour, slow, 5.0)
    patient, thread = uuid.uuid4(), uuid.uuid4()
    async with session(chat_gateway.ws_url, patient_token(patient)) as (ws, _):
        await send(ws, chat_send(thread, "Hello?"))
        before, done = await until(ws, "chat.done")
    [error] = [f["error"] for f in before if f["type"] == "error"]
    assert error["code"] == "upstream_timeout" and error["retryable"]
    assert done["finish_reason"] == "error"
    assert assert_in_order(before) == expected
    rows = await messages_of(db, thread)
    assert (rows[1]["content"], rows[1]["finish_reason"]) == (expected, "error")


async def test_cancel_stops_the_model_and_keeps_the_partial_reply(
    chat_gateway: Gateway, upstream: Upstream, db: asyncpg.Connection
) -> None:
    slow_reply(upstream.behaviour)
    patient, thread = uuid.uuid4(), uuid.uuid4()
    async with session(chat_gateway.ws_url, patient_token(patient)) as (ws, _):
        await send(ws, chat_send(thread, "Explain flare-ups"))
        ack = await recv(ws)
        await until(ws, "chat.delta")
        await send(ws, {"type": "chat.cancel", "id": "x", "response_id": ack["response_id"]})
        before, done = await until(ws, "chat.done")
        assert {"type": "ack", "ref": "x", "stopped": True} in before
        # Again, once it has ended: nothing to stop, and the ack says so.
        await send(ws, {"type": "chat.cancel", "id": "y", "response_id": ack["response_id"]})
        stopped = await recv(ws, skip=("sync.delta", "presence"))
        assert stopped == {"type": "ack", "ref": "y", "stopped": False}
    assert done["finish_reason"] == "cancelled"
    rows = await messages_of(db, thread)
    stored = rows[1]["content"]
    assert rows[1]["finish_reason"] == "cancelled"
    assert stored and len(stored) < len("".join(upstream.behaviour.tokens))
    assert upstream.behaviour.aborted == 1  # the upstream stream was closed


async def test_a_reply_can_be_cancelled_before_its_first_token(
    chat_gateway: Gateway, upstream: Upstream, db: asyncpg.Connection
) -> None:
    upstream.behaviour.first_token_delay_s = 5.0
    patient, thread = uuid.uuid4(), uuid.uuid4()
    async with session(chat_gateway.ws_url, patient_token(patient)) as (ws, _):
        await send(ws, chat_send(thread, "Never mind"))
        ack = await recv(ws)
        await send(ws, {"type": "chat.cancel", "id": "x", "response_id": ack["response_id"]})
        before, done = await until(ws, "chat.done")
    assert done["finish_reason"] == "cancelled" and not deltas(before)
    rows = await messages_of(db, thread)
    assert [(r["role"], r["content"], r["finish_reason"]) for r in rows] == [
        ("user", "Never mind", None),
        ("assistant", "", "cancelled"),
    ]


async def test_the_reply_goes_on_when_the_sender_disconnects(
    chat_gateway: Gateway, upstream: Upstream, db: asyncpg.Connection
) -> None:
    slow_reply(upstream.behaviour, tokens=30)
    patient, thread = uuid.uuid4(), uuid.uuid4()
    async with session(chat_gateway.ws_url, patient_token(patient, "phone")) as (phone, _):
        async with session(chat_gateway.ws_url, patient_token(patient, "headset")) as (ws, _):
            await send(ws, chat_send(thread, "I have to go"))
            await until(ws, "chat.delta")
        before, done = await until(phone, "chat.done")
    assert done["finish_reason"] == "stop"
    assert assert_in_order(before) == "".join(upstream.behaviour.tokens)
    rows = await messages_of(db, thread)
    assert rows[1]["content"] == "".join(upstream.behaviour.tokens)


async def test_a_second_message_while_a_reply_streams_is_busy_and_not_stored(
    chat_gateway: Gateway, upstream: Upstream, db: asyncpg.Connection
) -> None:
    slow_reply(upstream.behaviour, tokens=30)
    patient, thread, other_thread = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with session(chat_gateway.ws_url, patient_token(patient)) as (ws, _):
        await send(ws, chat_send(thread, "First"))
        await until(ws, "chat.delta")
        await send(ws, chat_send(thread, "Second", "c2"))
        _, error = await until(ws, "error")
        assert error["error"]["code"] == "busy" and error["error"]["ref"] == "c2"
        assert error["error"]["retryable"] is True
        # Another thread is not held up.
        await send(ws, chat_send(other_thread, "Elsewhere", "c3"))
        _, ack = await until(ws, "ack")
        assert ack["ref"] == "c3"
        await until(ws, "chat.done")
        await until(ws, "chat.done")
    contents = [r["content"] for r in await messages_of(db, thread)]
    assert "Second" not in contents and "First" in contents


async def test_invalid_chat_frames_are_refused_and_store_nothing(
    chat_gateway: Gateway, db: asyncpg.Connection
) -> None:
    patient, thread = uuid.uuid4(), uuid.uuid4()
    cases = [
        (chat_send(thread, ""), "invalid", "text"),
        (chat_send(thread, "x" * 8001), "invalid", "text"),
        (chat_send(thread, "hi", svg_path="M10 10 <script>"), "invalid", "svg_path"),
        (chat_send(thread, "hi", svg_path="L10 10"), "invalid", "svg_path"),
        ({**chat_send(thread, "hi"), "thread_id": "nope"}, "invalid", "thread_id"),
        ({**chat_send(thread, "hi"), "extra": 1}, "invalid", "extra"),
        ({"type": "chat.cancel", "id": "x", "response_id": "nope"}, "invalid", "response_id"),
    ]
    async with session(chat_gateway.ws_url, patient_token(patient)) as (ws, _):
        for frame, code, field in cases:
            await send(ws, frame)
            error = (await recv(ws))["error"]
            assert error["code"] == code and error["message"].startswith(field), error
        await send(ws, {"type": "ping"})
        assert (await recv(ws))["type"] == "pong"  # still usable
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


async def test_threads_of_another_patient_or_deleted_ones_are_refused(
    chat_gateway: Gateway, db: asyncpg.Connection
) -> None:
    owner, intruder, thread = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with session(chat_gateway.ws_url, patient_token(owner)) as (ws, _):
        await send(ws, chat_send(thread, "Mine"))
        await until(ws, "chat.done")
    async with session(chat_gateway.ws_url, patient_token(intruder)) as (ws, _):
        await send(ws, chat_send(thread, "Not mine"))
        error = (await recv(ws))["error"]
        assert error["code"] == "forbidden" and error["message"].startswith("thread_id")
    async with session(chat_gateway.ws_url, patient_token(owner)) as (ws, _):
        delete = {"mutation_id": "d", "entity": "thread", "op": "delete", "id": str(thread)}
        await send(ws, {"type": "sync.push", "id": "p", "mutations": [delete]})
        await until(ws, "sync.ack")
        await send(ws, chat_send(thread, "Again"))
        _, error = await until(ws, "error")
        assert error["error"]["code"] == "conflict"
    contents = [r["content"] for r in await messages_of(db, thread)]
    assert "Not mine" not in contents and "Again" not in contents
    assert await db.fetchval("SELECT count(*) FROM reply_leases") == 0


async def test_client_message_ids_and_sync_push_mutation_ids_do_not_collide(
    chat_gateway: Gateway, db: asyncpg.Connection
) -> None:
    thread, other = uuid.uuid4(), uuid.uuid4()
    async with session(chat_gateway.ws_url, patient_token()) as (ws, _):
        # A device that numbers both kinds of id from one counter.
        title = {"title": "Knee"}
        push = {"mutation_id": "7", "entity": "thread", "op": "upsert", "id": str(thread)}
        await send(ws, {"type": "sync.push", "id": "p", "mutations": [{**push, "data": title}]})
        assert (await until(ws, "sync.ack"))[1]["applied"] == ["7"]
        await until(ws, "sync.delta")  # after the ack, on the pushing socket
        await send(ws, chat_send(thread, "My knee is stiff", client_message_id="7"))
        ack = await recv(ws)
        assert ack["type"] == "ack" and "response_id" in ack
        _, done = await until(ws, "chat.done")
        assert done["finish_reason"] == "stop"
        # Only a push id that takes chat's own namespace names the same change: refused.
        push = {**push, "mutation_id": "chat:8", "id": str(other)}
        await send(ws, {"type": "sync.push", "id": "q", "mutations": [{**push, "data": title}]})
        await until(ws, "sync.ack")
        await send(ws, chat_send(thread, "Is swelling normal?", client_message_id="8"))
        _, error = await until(ws, "error")
        assert error["error"]["code"] == "conflict"
        assert error["error"]["message"].startswith("client_message_id")
        await send(ws, {"type": "ping"})
        assert (await recv(ws))["type"] == "pong"  # still usable
    contents = [r["content"] for r in await messages_of(db, thread)]
    assert contents == ["My knee is stiff", "Hello, there."]
    assert await db.fetchval("SELECT count(*) FROM reply_leases") == 0


async def test_clinicians_cannot_send_chat(chat_gateway: Gateway) -> None:
    async with session(chat_gateway.ws_url, clinician_token()) as (ws, _):
        await send(ws, chat_send(uuid.uuid4(), "hi"))
        assert (await recv(ws))["error"]["code"] == "forbidden"


async def test_offline_providers_answer_from_memories_end_to_end(
    gateway: Gateway, db: asyncpg.Connection
) -> None:
    patient, thread = uuid.uuid4(), uuid.uuid4()
    async with session(gateway.ws_url, patient_token(patient)) as (ws, ready):
        assert ready["providers"]["chat"] == "offline"
        await send(ws, chat_send(thread, "Swimming helps my shoulder", "a"))
        before, done = await until(ws, "chat.done")
        assert "No language model is configured" in assert_in_order(before)
        await send(ws, chat_send(uuid.uuid4(), "What helps my shoulder?", "b"))
        before, done = await until(ws, "chat.done")
        assert "Swimming helps my shoulder" in assert_in_order(before)
        assert done["finish_reason"] == "stop"
    assert await memory_count(db, patient) == 4


@pytest.mark.parametrize("chat_gateway", [{"chat_coalesce_ms": 150}], indirect=True)
async def test_tokens_within_a_window_go_together_and_never_wait_past_it(
    chat_gateway: Gateway, upstream: Upstream
) -> None:
    # "a" after a quiet spell goes at once; "b" and "c" come within the window and go
    # together when it ends, although the model then pauses before "d".
    upstream.behaviour.tokens = ["a", "b", "c", "d"]
    upstream.behaviour.token_delays = [0.0, 0.01, 0.01, 0.8]
    async with session(chat_gateway.ws_url, patient_token()) as (ws, _):
        await send(ws, chat_send(uuid.uuid4(), "hi"))
        arrivals = []
        while True:
            frame = await recv(ws)
            if frame["type"] == "chat.delta":
                arrivals.append((time.monotonic(), frame["delta"]))
            if frame["type"] == "chat.done":
                break
    assert [text for _, text in arrivals] == ["a", "bc", "d"]
    assert arrivals[2][0] - arrivals[1][0] > 0.4  # "bc" did not wait for "d"


@pytest.mark.parametrize(
    ("chat_gateway", "finish_reason"),
    [({"drain_seconds": 10}, "stop"), ({"drain_seconds": 0.1}, "error")],
    indirect=["chat_gateway"],
)
async def test_a_drain_waits_for_streaming_replies_and_stores_what_it_cut(
    chat_gateway: Gateway, upstream: Upstream, db: asyncpg.Connection, finish_reason: str
) -> None:
    slow_reply(upstream.behaviour, tokens=40)
    patient, thread = uuid.uuid4(), uuid.uuid4()
    async with session(chat_gateway.ws_url, patient_token(patient)) as (ws, _):
        await send(ws, chat_send(thread, "Before the restart"))
        await until(ws, "chat.delta")
        chat_gateway.server.handle_exit(15, None)  # what SIGTERM does
        frames: list[dict[str, Any]] = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                frames.append(await recv(ws))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    assert frames[0]["type"] == "reconnect"
    assert ("chat.done" in [f["type"] for f in frames]) == (finish_reason == "stop")

    async def stored() -> bool:
        rows = await messages_of(db, thread)
        return len(rows) == 2 and rows[1]["finish_reason"] == finish_reason

    await eventually(stored, what=f"the reply stored with finish_reason {finish_reason}")


async def test_frames_out_counts_the_sockets_deltas_only(
    chat_gateway: Gateway, upstream: Upstream
) -> None:
    """A streaming reply is not a socket on the patient's topic: ws_frames_out_total
    grows by exactly the deltas the patient's one socket received."""

    async def delta_count(http: httpx.AsyncClient) -> float:
        metrics = (await http.get(f"{chat_gateway.url}/metrics")).text
        try:
            return sample(metrics, "ws_frames_out_total", type="chat.delta")
        except AssertionError:
            return 0.0  # no delta counted yet in this process

    slow_reply(upstream.behaviour, tokens=8, delay_s=0.03)  # slower than the coalescing
    async with httpx.AsyncClient() as http:
        before = await delta_count(http)
        async with session(chat_gateway.ws_url, patient_token()) as (ws, _):
            await send(ws, chat_send(uuid.uuid4(), "How long should I rest my knee?"))
            frames, _ = await until(ws, "chat.done")
        received = len(deltas(frames))
        assert received == 8
        assert await delta_count(http) - before == received
