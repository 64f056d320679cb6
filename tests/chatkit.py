"""What the chat suites share: the fake model server as a fixture, a gateway pointed at
it, and readers for the frames of a reply."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from websockets.asyncio.client import ClientConnection

from tests.fake_openai import Behaviour, fake_openai_app
from tests.support import Gateway, make_settings, serve_app, serve_gateway
from tests.wsclient import recv


@dataclass
class Upstream:
    behaviour: Behaviour
    url: str


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    behaviour = Behaviour()
    async with serve_app(fake_openai_app(behaviour)) as (_, url):
        yield Upstream(behaviour, f"{url}/v1")


@pytest.fixture
async def chat_gateway(
    database_url: str, upstream: Upstream, request: pytest.FixtureRequest
) -> AsyncIterator[Gateway]:
    overrides: dict[str, Any] = {
        "openai_base_url": upstream.url,
        "chat_retry_backoff_s": 0.01,
        **getattr(request, "param", {}),
    }
    async with serve_gateway(make_settings(**overrides), database_url) as running:
        yield running


def chat_send(thread: uuid.UUID, text: str, frame_id: str = "c1", **extra: Any) -> dict[str, Any]:
    return {"type": "chat.send", "id": frame_id, "thread_id": str(thread), "text": text, **extra}


async def until(ws: ClientConnection, kind: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Frames read before the first of type `kind`, and that frame."""
    before: list[dict[str, Any]] = []
    while True:
        frame = await recv(ws)
        if frame["type"] == kind:
            return before, frame
        before.append(frame)


def deltas(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"] == "chat.delta"]


def assert_in_order(frames: list[dict[str, Any]]) -> str:
    """The deltas' seq rise by 1 from 0; returns their text."""
    parts = deltas(frames)
    assert [d["seq"] for d in parts] == list(range(len(parts)))
    return "".join(d["delta"] for d in parts)


async def messages_of(db: asyncpg.Connection, thread: uuid.UUID) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT id, role, content, finish_reason, reply_to, source FROM messages "
        "WHERE thread_id = $1 ORDER BY created_at, role DESC",
        thread,
    )


def slow_reply(behaviour: Behaviour, tokens: int = 200, delay_s: float = 0.02) -> None:
    behaviour.tokens = [f" w{n}" for n in range(tokens)]
    behaviour.token_delay_s = delay_s
