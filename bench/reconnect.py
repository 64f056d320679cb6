"""A reconnect storm: SOCKETS sockets (default 5,000, one patient each) on gateway A; A is
drained (SIGTERM: a `reconnect` frame, then close 1012) and every client reconnects at
once to gateway B with the token it already had, as a fleet does after a deploy. Prints
the time from the drain until every socket has its `session.ready` on B, and the spread
of each socket's own reconnect (its close seen -> `session.ready` on B), with B's CPU.

The clients run in this process on the same 2 cores (connections opened in waves of
WAVE, default 250, to keep the client side from being what is measured): the figures are
an upper bound of what the gateway alone would take. The storm runs twice, with two
kinds of client: the `websockets` library's (what earlier records measured), then the
lean raw-frame client of bench/_wsclient.py, which costs the shared cores less per
connect, so the second figure is nearer the gateway's own.

    just bench reconnect        (SOCKETS=5000 WAVE=250 to change; CLIENTS=lean for one)
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
import uuid
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench._harness import SECRET, cpu_seconds, gateways, percentile, services
from bench._wsclient import open_client
from gateway.auth import issue_token

SOCKETS = int(os.environ.get("SOCKETS", "5000"))
WAVE = int(os.environ.get("WAVE", "250"))


async def open_ready(port: int, token: str) -> ClientConnection:
    ws = await connect(
        f"ws://127.0.0.1:{port}/v1/ws",
        additional_headers={"Authorization": f"Bearer {token}"},
        ping_interval=None,
        open_timeout=60,
    )
    while True:  # presence frames may come first on a busy process
        if b'"session.ready"' in (await ws.recv(decode=False)):
            return ws


class WebsocketsClients:
    label = "websockets clients"

    async def open(self, port: int, token: str) -> Any:
        return await open_ready(port, token)

    async def closed(self, ws: Any) -> None:
        try:
            while True:
                await ws.recv(decode=False)  # the reconnect frame, then the close
        except ConnectionClosed:
            pass

    async def close(self, ws: Any) -> None:
        await ws.close()


class LeanClients:
    """bench/_wsclient.py's raw-frame client, ready once `session.ready` has arrived."""

    label = "lean clients"

    async def open(self, port: int, token: str) -> Any:
        ready = asyncio.get_running_loop().create_future()

        def on_text(text: bytes) -> None:
            if b'"session.ready"' in text and not ready.done():
                ready.set_result(None)

        protocol = await open_client(port, token, on_text)
        await ready
        return protocol

    async def closed(self, protocol: Any) -> None:
        await protocol.closed

    async def close(self, protocol: Any) -> None:
        protocol.close()


async def storm(dsn: str, redis_url: str, clients: WebsocketsClients | LeanClients) -> None:
    async with gateways(2, dsn, redis_url, DRAIN_SECONDS="2") as [(a_pid, a), (b_pid, b)]:
        tokens = [
            issue_token(SECRET, role="patient", sub=uuid.uuid4(), device_id=f"d{n}", ttl_s=3600)
            for n in range(SOCKETS)
        ]
        first: list[Any] = []
        began = time.perf_counter()
        for start in range(0, SOCKETS, WAVE):
            wave = tokens[start : start + WAVE]
            first += await asyncio.gather(*(clients.open(a, t) for t in wave))
        elapsed = time.perf_counter() - began
        print(f"{clients.label}: {SOCKETS:,} sockets ready on A in {elapsed:.1f} s", flush=True)

        took: list[float] = []
        ready_at: list[float] = []

        async def follow(old: Any, token: str) -> Any:
            await clients.closed(old)
            closed = time.perf_counter()
            again = await clients.open(b, token)
            now = time.perf_counter()
            took.append(now - closed)
            ready_at.append(now)
            return again

        followers = [
            asyncio.create_task(follow(old, t)) for old, t in zip(first, tokens, strict=True)
        ]
        cpu_before = cpu_seconds(b_pid)
        drained = time.perf_counter()
        os.kill(a_pid, signal.SIGTERM)
        second = await asyncio.gather(*followers)
        cpu = cpu_seconds(b_pid) - cpu_before
        ms = sorted(x * 1000 for x in took)
        print(
            f"{clients.label}: drain of A -> all {len(second):,} ready on B: "
            f"{max(ready_at) - drained:.1f} s; "
            f"each socket's reconnect p50 {statistics.median(ms):,.0f} ms, "
            f"p99 {percentile(ms, 99):,.0f} ms, max {ms[-1]:,.0f} ms; "
            f"B's CPU {cpu:.1f} s ({cpu * 1e6 / len(second):,.0f} us per reconnect)",
            flush=True,
        )
        await asyncio.gather(*(clients.close(c) for c in second))


def main() -> None:
    print(f"reconnect storm, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs")
    with services() as (dsn, redis_url, _):
        if os.environ.get("CLIENTS") != "lean":
            asyncio.run(storm(dsn, redis_url, WebsocketsClients()))
        asyncio.run(storm(dsn, redis_url, LeanClients()))


if __name__ == "__main__":
    main()
