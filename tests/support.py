"""Helpers the suites share: settings, servers on ephemeral ports, waiting with timeouts."""

from __future__ import annotations

import asyncio
import os
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

import httpx
from starlette.applications import Starlette

from gateway.app import Services, create_app
from gateway.server import GatewayServer, uvicorn_config
from gateway.settings import Settings
from protocol.frames import ChatDelta
from storage.database import Connection

# Every wait in the suite is bounded by a multiple of this; raise it on slow machines.
TIMEOUT_S = 10.0 * float(os.environ.get("PAINAR_TEST_TIMEOUT_SCALE", "1"))
TEST_SECRET = "test-secret-key-of-at-least-32-characters"
REPO = Path(__file__).resolve().parent.parent


def make_settings(**overrides: Any) -> Settings:
    """Settings from these values only: no `.env`, and the environment cannot add any."""
    values: dict[str, Any] = {
        "database_url": None,
        "redis_url": None,
        "openai_api_key": None,
        "openai_base_url": None,
        "sentry_dsn": None,
        "debug": False,
        "secret_key": TEST_SECRET,
        "vector_dim": 1536,
        "summary_at": None,  # no summary run at start-up; the summary tests ask for one
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def with_database(dsn: str, name: str) -> str:
    """`dsn` pointed at database `name` (unix-socket hosts in the query string kept)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout: float = TIMEOUT_S, what: str = ""
) -> None:
    """Wait until `check()` is true, polling; fail after `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not await check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what or check}") from None


@dataclass
class Gateway:
    url: str
    app: Starlette
    server: GatewayServer

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/v1/ws"

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services


@asynccontextmanager
async def serve_app(
    app: Starlette, settings: Settings | None = None
) -> AsyncIterator[tuple[GatewayServer, str]]:
    """`app` under a real uvicorn on an ephemeral port, in this event loop; yields the
    server and its base URL."""
    server = GatewayServer(uvicorn_config(app, settings or make_settings(), "127.0.0.1", 0), app)
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        if task.done():
            task.result()  # surface a start-up failure
        return server.started

    await eventually(started, what="uvicorn to start")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield server, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        async with asyncio.timeout(TIMEOUT_S):
            await task


@asynccontextmanager
async def serve_gateway(settings: Settings, database_url: str) -> AsyncIterator[Gateway]:
    """The gateway under a real uvicorn on an ephemeral port, in this event loop."""
    app = create_app(settings, database_url=database_url)
    async with serve_app(app, settings) as (server, url):
        yield Gateway(url, app, server)


@asynccontextmanager
async def run_gateway(settings: Settings, database_url: str) -> AsyncIterator[str]:
    """Like serve_gateway, yielding only the base URL."""
    async with serve_gateway(settings, database_url) as gateway:
        yield gateway.url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample in `text` (fails if absent)."""
    rendered = ",".join(f'{k}="{v}"' for k, v in labels.items())
    series = f"{name}{{{rendered}}}" if labels else name
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    assert match is not None, f"{series} not in /metrics"
    return float(match[1])


# Variables the gateway reads; the tests' processes get only what each test sets.
SETTING_NAMES = {name.upper() for name in Settings.model_fields}


def gateway_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
    env["SUMMARY_AT"] = "off"  # as make_settings: a test that wants a summary run says so
    env.update(values)
    return env


async def bulk_memories(
    conn: Connection, patients: int, per_patient: int, dim: int, coordinate: str = "random() - 0.5"
) -> None:
    """Fixture data in bulk, outside the change log: `patients` new patients with one
    thread and `per_patient` messages each, every message with a memory whose `dim`
    coordinates are the SQL expression `coordinate` (it may use the coordinate's index
    `i`, from 1)."""
    await conn.execute(
        f"""
        WITH p AS (
            INSERT INTO patients (id) SELECT gen_random_uuid() FROM generate_series(1, $1)
            RETURNING id
        ), t AS (
            INSERT INTO threads (id, patient_id) SELECT gen_random_uuid(), id FROM p
            RETURNING id, patient_id
        ), m AS (
            INSERT INTO messages (id, patient_id, thread_id, role, content, source)
            SELECT gen_random_uuid(), t.patient_id, t.id, 'user', 'earlier', 'sync'
            FROM t, generate_series(1, $2)
            RETURNING id, patient_id
        )
        INSERT INTO memories (message_id, patient_id, embedding)
        SELECT m.id, m.patient_id,
               (SELECT array_agg({coordinate}) FROM generate_series(1, $3) i
                WHERE m.id IS NOT NULL)::vector
        FROM m
        """,
        patients,
        per_patient,
        dim,
    )
    # The fixture's messages come with their memories: nothing is left to embed.
    await conn.execute(
        "DELETE FROM embedding_queue q USING memories m WHERE m.message_id = q.message_id"
    )


async def wait_ready(port: int, timeout: float, what: str) -> None:
    """Until the gateway on `port` answers /readyz with 200."""
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as http:

        async def ready() -> bool:
            try:
                response = await http.get(f"http://127.0.0.1:{port}/readyz")
            except httpx.TransportError:
                return False
            return response.status_code == 200

        await eventually(ready, timeout=timeout, what=what)


def chat_delta(patient: UUID, seq: int, text: str = "word ") -> ChatDelta:
    """A reply's delta for the patient, as a hub publishes it."""
    return ChatDelta(
        patient_id=patient,
        thread_id=UUID(int=1),
        response_id=UUID(int=2),
        seq=seq,
        delta=text,
    )
