"""Local model servers (llama.cpp's server, Ollama, vLLM, TGI, faster-whisper-server) through
the OpenAI-compatible providers: the suite's stand-in server speaks each dialect's known
differences — no usage chunk, finish reasons other than OpenAI's or none at all, an
embeddings endpoint that refuses `dimensions` — and chat, embeddings and transcription may
each live on a server of their own (CHAT_BASE_URL, EMBEDDING_BASE_URL,
TRANSCRIPTION_BASE_URL)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.chatkit import Upstream, chat_send, messages_of, until
from tests.fake_openai import Behaviour, fake_openai_app
from tests.speech import silence
from tests.support import Gateway, eventually, make_settings, serve_app, serve_gateway
from tests.wsclient import patient_token, send, session


@pytest.mark.parametrize(
    ("dialect", "changes"),
    [
        ("no usage chunk (Ollama, older llama.cpp)", {"send_usage": False}),
        ("a finish reason of its own (TGI's eos_token)", {"finish_reason": "eos_token"}),
        ("no finish reason, only [DONE]", {"finish_reason": None, "send_usage": False}),
    ],
)
async def test_a_reply_from_each_dialect_streams_and_is_stored_whole(
    chat_gateway: Gateway,
    upstream: Upstream,
    db: asyncpg.Connection,
    dialect: str,
    changes: dict[str, object],
) -> None:
    for name, value in changes.items():
        setattr(upstream.behaviour, name, value)
    patient, thread = uuid.uuid4(), uuid.uuid4()
    async with session(chat_gateway.ws_url, patient_token(patient)) as (ws, _):
        await send(ws, chat_send(thread, "My knee hurts", client_message_id="k"))
        frames, done = await until(ws, "chat.done")
    assert done["finish_reason"] == "stop", dialect
    assert ("usage" in done) == upstream.behaviour.send_usage
    assert "".join(f["delta"] for f in frames if f["type"] == "chat.delta") == "Hello, there."
    [_, reply] = await messages_of(db, thread)
    assert reply["content"] == "Hello, there." and reply["finish_reason"] == "stop"


@pytest.mark.parametrize("chat_gateway", [{"embedding_model": "nomic-embed-text"}], indirect=True)
async def test_an_embedding_model_of_another_name_is_not_sent_dimensions(
    chat_gateway: Gateway, upstream: Upstream, db: asyncpg.Connection
) -> None:
    upstream.behaviour.refuse_dimensions = True  # as many local servers do
    patient = uuid.uuid4()
    async with session(chat_gateway.ws_url, patient_token(patient)) as (ws, _):
        await send(ws, chat_send(uuid.uuid4(), "Swimming eases my back", client_message_id="s"))
        await until(ws, "chat.done")
    embedded = [r for r in upstream.behaviour.requests if "input" in r]
    assert embedded and all("dimensions" not in r for r in embedded)
    assert all(r["model"] == "nomic-embed-text" for r in embedded)

    async def remembered() -> bool:
        count = await db.fetchval("SELECT count(*) FROM memories WHERE patient_id = $1", patient)
        return bool(count)

    await eventually(remembered, what="the message's memory")


@pytest.fixture
async def second_server() -> AsyncIterator[Upstream]:
    behaviour = Behaviour()
    async with serve_app(fake_openai_app(behaviour)) as (_, url):
        yield Upstream(behaviour, f"{url}/v1")


async def test_each_capability_goes_to_its_own_server(
    database_url: str, upstream: Upstream, second_server: Upstream
) -> None:
    """Chat on one server (a llama.cpp), embeddings and transcription on another (an
    embedding server beside a faster-whisper-server); OPENAI_BASE_URL unset."""
    settings = make_settings(
        chat_base_url=upstream.url,
        embedding_base_url=second_server.url,
        transcription_base_url=second_server.url,
        chat_retry_backoff_s=0.01,
    )
    patient, thread, stream = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with (
        serve_gateway(settings, database_url) as gateway,
        session(gateway.ws_url, patient_token(patient)) as (ws, ready),
    ):
        assert ready["providers"]["asr"] == "openai:whisper-1"
        assert ready["providers"]["chat"] == "openai:gpt-4o-mini"
        await send(ws, chat_send(thread, "My hip aches at night", client_message_id="h"))
        await until(ws, "chat.done")
        start = {
            "type": "audio.start",
            "id": "a",
            "stream_id": str(stream),
            "thread_id": str(uuid.uuid4()),
            "format": "pcm16",
            "sample_rate": 16000,
            "respond": False,
        }
        await send(ws, start)
        await until(ws, "ack")
        chunk = {"type": "audio.append", "stream_id": str(stream), "seq": 0}
        await send(ws, {**chunk, "audio": base64.b64encode(silence(300)).decode()})
        await send(ws, {"type": "audio.commit", "id": "c", "stream_id": str(stream)})
        await until(ws, "audio.transcript")
    assert upstream.behaviour.chat_requests and not second_server.behaviour.chat_requests
    assert any("input" in r for r in second_server.behaviour.requests)
    assert not any("input" in r for r in upstream.behaviour.requests)
    assert second_server.behaviour.uploads and not upstream.behaviour.uploads
