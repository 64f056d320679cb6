"""Idle sockets and connects, the gateway against the floor (bench/floor.py) in one run:
RSS of one server process before and after opening N sockets, and the server's CPU time
per connect. A gateway socket is authenticated and past session.ready (one patient each,
so each has its own Redis subscription and presence entry); a floor socket is accepted
and joined to its room. Then all idle.

    just bench connections        (COUNTS=1000,5000 to change)
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from websockets.asyncio.client import ClientConnection, connect

from bench._harness import SECRET, cpu_seconds, floors, gateways, rss_bytes, services
from gateway.auth import issue_token

COUNTS = [int(n) for n in os.environ.get("COUNTS", "1000,5000").split(",")]

Servers = Callable[[], AbstractAsyncContextManager[list[tuple[int, int]]]]


async def measure(label: str, servers: Servers, count: int) -> tuple[float, float]:
    """(KiB of RSS per idle socket, µs of server CPU per connect)."""
    async with servers() as [(pid, port)]:
        await asyncio.sleep(1)
        before, cpu_before = rss_bytes(pid), cpu_seconds(pid)
        sockets: list[ClientConnection] = []
        for n in range(count):
            patient = uuid.uuid4()
            token = issue_token(SECRET, role="patient", sub=patient, device_id=f"d{n}")
            ws = await connect(
                f"ws://127.0.0.1:{port}/v1/ws",
                additional_headers={"Authorization": f"Bearer {token}"},
                ping_interval=None,
            )
            if label == "gateway":
                await ws.recv()  # session.ready
            sockets.append(ws)
        connect_cpu = cpu_seconds(pid) - cpu_before
        await asyncio.sleep(3)  # presence frames and renewals settle
        after = rss_bytes(pid)
        per_socket = (after - before) / count / 1024
        per_connect = connect_cpu * 1e6 / count
        print(
            f"{label}, {count} idle sockets: RSS {before / 2**20:.1f} MiB -> "
            f"{after / 2**20:.1f} MiB, {per_socket:.1f} KiB per socket; "
            f"{per_connect:,.0f} µs of server CPU per connect",
            flush=True,
        )
        for ws in sockets:
            await ws.close()
        return per_socket, per_connect


async def compare(dsn: str, redis_url: str, count: int) -> None:
    ours = await measure("gateway", lambda: gateways(1, dsn, redis_url), count)
    theirs = await measure("floor", lambda: floors(1, redis_url), count)
    print(
        f"ratio gateway ÷ floor at {count} sockets: memory per socket "
        f"{ours[0] / theirs[0]:.2f}, CPU per connect {ours[1] / theirs[1]:.2f}",
        flush=True,
    )


def main() -> None:
    print(f"idle sockets and connects, one process each, {time.strftime('%Y-%m-%d')}")
    with services() as (dsn, redis_url, _):
        for count in COUNTS:
            asyncio.run(compare(dsn, redis_url, count))


if __name__ == "__main__":
    main()
