"""A real WebSocket client for the suites (the `websockets` library), with timeouts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway.auth import issue_token
from tests.support import TEST_SECRET, TIMEOUT_S


def patient_token(patient_id: uuid.UUID | None = None, device_id: str = "headset") -> str:
    patient_id = patient_id or uuid.uuid4()
    return issue_token(TEST_SECRET, role="patient", sub=patient_id, device_id=device_id)


def clinician_token(sub: uuid.UUID | None = None) -> str:
    return issue_token(TEST_SECRET, role="clinician", sub=sub or uuid.uuid4())


@asynccontextmanager
async def open_socket(
    ws_url: str, token: str | None = None, **kwargs: Any
) -> AsyncIterator[ClientConnection]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else None
    async with asyncio.timeout(TIMEOUT_S):
        ws = await connect(ws_url, additional_headers=headers, **kwargs)
    try:
        yield ws
    finally:
        await ws.close()


@asynccontextmanager
async def session(
    ws_url: str, token: str, **kwargs: Any
) -> AsyncIterator[tuple[ClientConnection, dict[str, Any]]]:
    """An authenticated socket and its session.ready frame."""
    async with open_socket(ws_url, token, **kwargs) as ws:
        ready = await recv(ws)
        assert ready["type"] == "session.ready", ready
        yield ws, ready


async def recv(
    ws: ClientConnection, timeout: float = TIMEOUT_S, skip: tuple[str, ...] = ("presence",)
) -> dict[str, Any]:
    """The next frame, passing over `skip` types (presence comes and goes on its own)."""
    async with asyncio.timeout(timeout):
        while True:
            frame = orjson.loads(await ws.recv())
            assert isinstance(frame, dict)
            if frame.get("type") not in skip:
                return frame


async def send(ws: ClientConnection, frame: dict[str, Any]) -> None:
    await ws.send(orjson.dumps(frame).decode())


async def expect_close(ws: ClientConnection, timeout: float = TIMEOUT_S) -> int:
    """Read until the server closes; returns the close code."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    except ConnectionClosed as closed:
        assert closed.rcvd is not None, "closed without a close frame"
        return closed.rcvd.code
    raise AssertionError("unreachable")


async def expect_silence(
    ws: ClientConnection, seconds: float = 0.3, skip: tuple[str, ...] = ("presence",)
) -> None:
    """Nothing but `skip` types arrives within `seconds` (the way to show non-delivery)."""
    try:
        frame = await recv(ws, timeout=seconds, skip=skip)
    except TimeoutError:
        return
    raise AssertionError(f"expected nothing, got {frame!r}")


async def expect_presence(
    ws: ClientConnection, devices: list[str], timeout: float = TIMEOUT_S
) -> dict[str, Any]:
    """Read until a presence frame lists exactly `devices` (other frames are passed over)."""
    async with asyncio.timeout(timeout):
        while True:
            frame = await recv(ws, skip=())
            if frame["type"] == "presence" and frame["devices"] == devices:
                return frame


def thread_upsert(n: int, thread: str, title: str) -> dict[str, Any]:
    """A `sync.push` (id `p<n>`) of one thread upsert (mutation `m<n>`)."""
    mutation = {
        "mutation_id": f"m{n}",
        "entity": "thread",
        "op": "upsert",
        "id": thread,
        "data": {"title": title},
    }
    return {"type": "sync.push", "id": f"p{n}", "mutations": [mutation]}
