"""What the send path (gateway/realtime/outbox.py) assumes of the ASGI server, checked
against the real uvicorn configured as the gateway runs it. If a dependency upgrade
breaks one of these, this test names the assumption instead of sockets going quiet.

1. `send` returns a coroutine, which the outbox steps by hand (`Outbox._start`).
2. A send to a writable transport completes on its first step, without suspending.
3. A send to a transport paused by flow control (the peer not reading) parks on an
   `asyncio.Future` with `_asyncio_future_blocking` set, which `outbox._finish` clears
   and waits on, as a task would.
"""

from __future__ import annotations

import asyncio
import inspect
from types import SimpleNamespace
from typing import Any, cast

import pytest
from starlette.applications import Starlette
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedOK

from gateway.realtime.outbox import _finish
from tests.support import TIMEOUT_S, serve_app

BIG = "x" * 65536


class ProbeApp:
    """A bare ASGI app that probes uvicorn's websocket `send` on one connection."""

    def __init__(self) -> None:
        self.state = SimpleNamespace()  # what uvicorn_config's entry point looks at
        self.findings: dict[str, Any] = {}
        self.probed = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        write = send({"type": "websocket.send", "text": "probe"})
        self.findings["coroutine"] = inspect.iscoroutine(write)
        try:
            write.send(None)
            self.findings["completes_at_once"] = False
            write.close()
        except StopIteration:
            self.findings["completes_at_once"] = True
        for _ in range(4000):  # up to 256 MB, far past any socket buffer on loopback
            write = send({"type": "websocket.send", "text": BIG})
            try:
                waiting = write.send(None)
            except StopIteration:
                continue
            self.findings["parks_on_future"] = isinstance(waiting, asyncio.Future)
            self.findings["future_blocking"] = getattr(waiting, "_asyncio_future_blocking", None)
            self.probed.set()
            await _finish(write, waiting)  # the outbox's own way of finishing it
            self.findings["finished"] = True
            break
        self.probed.set()
        await send({"type": "websocket.close", "code": 1000})


async def test_the_send_path_assumptions_hold_for_the_installed_uvicorn() -> None:
    probe = ProbeApp()
    async with serve_app(cast(Starlette, probe)) as (_, url):
        async with connect(url.replace("http://", "ws://") + "/probe", max_size=None) as ws:
            async with asyncio.timeout(TIMEOUT_S):
                await probe.probed.wait()  # not reading until the transport has paused
                received = 0
                with pytest.raises(ConnectionClosedOK):
                    while True:
                        await ws.recv()
                        received += 1
    found = probe.findings
    assert found.get("coroutine"), (
        "ASSUMPTION BROKEN: uvicorn's websocket send no longer returns a coroutine; "
        "gateway/realtime/outbox.py steps it by hand (Outbox._start)"
    )
    assert found.get("completes_at_once"), (
        "ASSUMPTION BROKEN: a websocket send to a writable transport now suspends; "
        "the outbox would start a drain task per frame (Outbox._start)"
    )
    assert found.get("parks_on_future") and found.get("future_blocking") is True, (
        "ASSUMPTION BROKEN: a send to a paused transport no longer parks on an "
        "asyncio.Future with _asyncio_future_blocking set (outbox._finish); found "
        f"{found}"
    )
    assert found.get("finished") and received > 2, found
