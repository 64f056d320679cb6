"""PostgreSQL goes away and comes back: frames that need it get a retryable
`unavailable` (REST 503), nothing half-written; `/readyz` reports the database down;
the pool recovers without a restart of the gateway; acknowledged writes are all there.

The server is really stopped and started again (an embedded PostgreSQL of this test's
own, on the same data directory), not simulated."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from storage.database import prepare_schema
from storage.embedded import EmbeddedPostgres
from tests.chatkit import Upstream, chat_send, until
from tests.support import eventually, make_settings, serve_gateway
from tests.wsclient import expect_close, open_socket, patient_token, recv, send, session


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path / "pg")
    try:
        yield server
    finally:
        server.stop()


def thread_push(ref: str) -> dict[str, Any]:
    mutation = {
        "mutation_id": ref,
        "entity": "thread",
        "op": "upsert",
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, ref)),
        "data": {"title": ref},
    }
    return {"type": "sync.push", "id": ref, "mutations": [mutation]}


async def answer(ws: Any) -> dict[str, Any]:
    while (frame := await recv(ws))["type"] == "sync.delta":
        pass
    return frame


async def test_postgres_restarting_under_the_gateway(own_postgres: EmbeddedPostgres) -> None:
    dsn = await asyncio.to_thread(own_postgres.start)
    settings = make_settings(db_acquire_timeout_s=2)
    await prepare_schema(dsn, vector_dim=settings.vector_dim)
    patient = uuid.uuid4()
    headers = {"Authorization": f"Bearer {patient_token(patient, 'phone')}"}
    async with (
        serve_gateway(settings, dsn) as gw,
        httpx.AsyncClient(base_url=gw.url, headers=headers) as http,
        session(gw.ws_url, patient_token(patient, "headset")) as (ws, _),
    ):
        await send(ws, thread_push("before"))
        assert (await answer(ws))["applied"] == ["before"]

        await asyncio.to_thread(own_postgres.stop)
        await send(ws, thread_push("during"))
        error = (await answer(ws))["error"]
        assert (error["code"], error["ref"], error["retryable"]) == ("unavailable", "during", True)
        ready = await http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"] == "unreachable"
        refused = await http.get("/sync/")
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "unavailable"
        async with open_socket(gw.ws_url, patient_token(patient, "tablet")) as late:
            assert (await recv(late))["error"]["code"] == "unavailable"
            assert await expect_close(late) == 1013
        await send(ws, {"type": "ping", "ts": 1})  # the socket itself stays usable
        assert (await answer(ws)) == {"type": "pong", "ts": 1}

        assert await asyncio.to_thread(own_postgres.start) == dsn

        async def database_back() -> bool:
            return (await http.get("/readyz")).status_code == 200

        await eventually(database_back, what="/readyz to see the database again")
        await send(ws, thread_push("during"))  # the refused write was not half-stored
        assert (await answer(ws))["applied"] == ["during"]
        await send(ws, {"type": "sync.pull", "id": "q", "since": 0})
        titles = [c["data"]["title"] for c in (await answer(ws))["changes"]]
        assert titles == ["before", "during"]


async def test_a_reply_that_ends_while_postgres_is_down_is_stored_once_it_is_back(
    own_postgres: EmbeddedPostgres, upstream: Upstream
) -> None:
    """The reply's text exists only in the gateway until it is stored: it waits for the
    database (STORE_RETRY_S) instead of being dropped, and chat.done follows the store."""
    dsn = await asyncio.to_thread(own_postgres.start)
    settings = make_settings(db_acquire_timeout_s=2, openai_base_url=upstream.url)
    await prepare_schema(dsn, vector_dim=settings.vector_dim)
    upstream.behaviour.tokens = ["Rest", " the", " knee", "."]
    upstream.behaviour.token_delays = [0.0, 0.5, 0.5, 0.5]
    thread = uuid.uuid4()
    async with (
        serve_gateway(settings, dsn) as gw,
        session(gw.ws_url, patient_token(uuid.uuid4(), "headset")) as (ws, _),
    ):
        await send(ws, chat_send(thread, "My knee hurts"))
        await until(ws, "chat.delta")
        await asyncio.to_thread(own_postgres.stop)
        text = ["Rest"]
        while "".join(text) != "Rest the knee.":  # the whole stream, the database away
            frame = await recv(ws)
            assert frame["type"] != "chat.done", frame
            if frame["type"] == "chat.delta":
                text.append(frame["delta"])
        assert await asyncio.to_thread(own_postgres.start) == dsn
        _, done = await until(ws, "chat.done")
        assert done["finish_reason"] == "stop"
        await send(ws, {"type": "sync.pull", "id": "q", "since": 0})
        _, changes = await until(ws, "sync.changes")
    stored = [c["data"] for c in changes["changes"] if c["id"] == done["message_id"]]
    assert [(d["role"], d["content"]) for d in stored] == [("assistant", "Rest the knee.")]
