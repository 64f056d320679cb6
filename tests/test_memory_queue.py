"""Every message is a memory: written by any path, embedded off the write path from the
durable queue, re-embedded when edited, forgotten when deleted, resumed after a restart
without embedding anything twice, and nothing lost while the embedding server fails."""

from __future__ import annotations

import time
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.chatkit import Upstream, chat_send, until
from tests.support import TIMEOUT_S, Gateway, eventually, make_settings, serve_gateway
from tests.wsclient import patient_token, recv, send, session


def message(thread: uuid.UUID, content: str, message_id: uuid.UUID | None = None) -> dict[str, Any]:
    return {
        "mutation_id": f"m-{uuid.uuid4()}",
        "entity": "message",
        "op": "upsert",
        "id": str(message_id or uuid.uuid4()),
        "data": {"thread_id": str(thread), "role": "user", "content": content},
    }


def thread_upsert(thread: uuid.UUID) -> dict[str, Any]:
    return {
        "mutation_id": f"t-{thread}",
        "entity": "thread",
        "op": "upsert",
        "id": str(thread),
        "data": {"title": "notes"},
    }


async def push(ws: Any, *mutations: dict[str, Any]) -> dict[str, Any]:
    await send(ws, {"type": "sync.push", "id": "p", "mutations": list(mutations)})
    while True:
        frame = await recv(ws)
        if frame["type"] == "sync.ack":
            return frame


async def memories(db: asyncpg.Connection, patient: uuid.UUID) -> dict[str, bytes]:
    """message content -> the sha of the text its memory was made from."""
    rows = await db.fetch(
        "SELECT ms.content, m.content_sha FROM memories m JOIN messages ms ON ms.id = "
        "m.message_id WHERE m.patient_id = $1",
        patient,
    )
    return {r["content"]: r["content_sha"] for r in rows}


def prompt_of(upstream: Upstream) -> str:
    messages: list[dict[str, str]] = upstream.behaviour.chat_requests[-1]["messages"]  # type: ignore[assignment]
    return " ".join(m["content"] for m in messages)


async def test_synced_and_posted_messages_are_remembered_in_a_later_prompt(
    chat_gateway: Gateway, upstream: Upstream, db: asyncpg.Connection
) -> None:
    patient, notes, chat = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    synced, posted = "My ankle swells after tennis", "I take ibuprofen for the ankle at night"
    async with session(chat_gateway.ws_url, patient_token(patient)) as (ws, _):
        await push(ws, thread_upsert(notes), message(notes, synced))
        async with httpx.AsyncClient(base_url=chat_gateway.url) as http:
            body = {
                "client_id": "phone",
                "messages": [
                    {
                        "id": str(uuid.uuid4()),
                        "operation": "insert",
                        "thread_id": str(notes),
                        "content": posted,
                    }
                ],
            }
            headers = {"Authorization": f"Bearer {patient_token(patient)}"}
            assert (await http.post("/sync/", json=body, headers=headers)).status_code == 200

        async def remembered() -> bool:
            return set(await memories(db, patient)) == {synced, posted}

        await eventually(remembered, what="both messages embedded from the queue")
        await send(ws, chat_send(chat, "What did I say about my ankle?"))
        await until(ws, "chat.done")
    assert synced in prompt_of(upstream) and posted in prompt_of(upstream)


async def graph_ready(db: asyncpg.Connection, patient: uuid.UUID) -> bool:
    return bool(
        await db.fetchval(
            "SELECT ready_at IS NOT NULL FROM memory_graphs WHERE patient_id = $1", patient
        )
    )


# With RETRIEVAL_EXACT_LIMIT 1 the worker gives the patient a memory graph once two
# memories are stored, and retrieval searches it.
@pytest.mark.parametrize(
    "chat_gateway", [{}, {"retrieval_exact_limit": 1}], ids=["exact", "graph"], indirect=True
)
async def test_an_edit_is_remembered_with_its_new_text_only_and_a_delete_not_at_all(
    chat_gateway: Gateway, upstream: Upstream, db: asyncpg.Connection
) -> None:
    with_graph = chat_gateway.services.settings.retrieval_exact_limit == 1
    patient, notes, chat = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    edited, deleted = uuid.uuid4(), uuid.uuid4()
    old, new, gone = "My knee hurts on stairs", "My shoulder hurts on stairs", "My hip hurts"
    async with session(chat_gateway.ws_url, patient_token(patient)) as (ws, _):
        await push(
            ws, thread_upsert(notes), message(notes, old, edited), message(notes, gone, deleted)
        )

        async def both() -> bool:
            return set(await memories(db, patient)) == {old, gone}

        await eventually(both, what="the first versions embedded")
        if with_graph:
            await eventually(lambda: graph_ready(db, patient), what="a memory graph")
        delete = {"mutation_id": "d", "entity": "message", "op": "delete", "id": str(deleted)}
        await push(ws, message(notes, new, edited), delete)
        # At once: the old vector and the deleted message's are forgotten.
        assert await memories(db, patient) == {}

        async def edited_again() -> bool:
            return set(await memories(db, patient)) == {new}

        await eventually(edited_again, what="the edit embedded")
        await send(ws, chat_send(chat, "What hurts on stairs, knee or shoulder or hip?"))
        await until(ws, "chat.done")
    prompt = prompt_of(upstream)
    assert new in prompt and old not in prompt and gone not in prompt
    assert await graph_ready(db, patient) is with_graph


async def test_a_push_of_500_messages_is_acknowledged_at_once_and_all_are_remembered(
    chat_gateway: Gateway, upstream: Upstream, db: asyncpg.Connection
) -> None:
    upstream.behaviour.embedding_delay_s = 0.3  # each batch of 64
    patient, notes = uuid.uuid4(), uuid.uuid4()
    async with session(chat_gateway.ws_url, patient_token(patient)) as (ws, _):
        await push(ws, thread_upsert(notes))
        mutations = [message(notes, f"note number {n}") for n in range(500)]
        started = time.monotonic()
        ack = await push(ws, *mutations)
        assert len(ack["applied"]) == 500
        assert time.monotonic() - started < 2 * 0.3  # not one embedding batch waited for

    async def all_remembered() -> bool:
        return len(await memories(db, patient)) == 500

    await eventually(all_remembered, timeout=3 * TIMEOUT_S, what="500 memories")
    assert sorted(upstream.behaviour.embedded) == sorted(f"note number {n}" for n in range(500))


async def test_the_queue_resumes_after_a_restart_and_embeds_nothing_twice(
    database_url: str, upstream: Upstream, db: asyncpg.Connection
) -> None:
    settings = make_settings(openai_base_url=upstream.url)
    patient, notes = uuid.uuid4(), uuid.uuid4()
    texts = [f"before the restart {n}" for n in range(20)]
    async with serve_gateway(settings, database_url) as first:
        async with session(first.ws_url, patient_token(patient)) as (ws, _):
            await push(ws, thread_upsert(notes), *(message(notes, t) for t in texts))
        # Stopped at once: the queued messages are not due yet (two seconds after a write).
    assert await db.fetchval("SELECT count(*) FROM embedding_queue") == 20
    assert upstream.behaviour.embedded == []
    async with serve_gateway(settings, database_url):

        async def all_remembered() -> bool:
            return len(await memories(db, patient)) == 20

        await eventually(all_remembered, what="the queue emptied by the restarted gateway")
    assert sorted(upstream.behaviour.embedded) == sorted(texts)  # each exactly once
    assert await db.fetchval("SELECT count(*) FROM embedding_queue") == 0


@pytest.mark.parametrize("chat_gateway", [{"embed_max_backoff_s": 0.5}], indirect=True)
async def test_an_embedding_server_that_fails_then_recovers_loses_nothing(
    chat_gateway: Gateway, upstream: Upstream, db: asyncpg.Connection
) -> None:
    upstream.behaviour.embedding_fail_with = [500, 503, 500]
    patient, notes = uuid.uuid4(), uuid.uuid4()
    async with session(chat_gateway.ws_url, patient_token(patient)) as (ws, _):
        await push(ws, thread_upsert(notes), *(message(notes, f"fact {n}") for n in range(10)))

    async def all_remembered() -> bool:
        return len(await memories(db, patient)) == 10

    await eventually(all_remembered, what="every message embedded after the failures")
    assert upstream.behaviour.embedding_fail_with == []
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{chat_gateway.url}/metrics")).text
    assert "embedding_queue_failures_total" in metrics
