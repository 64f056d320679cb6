"""Memory per idle authenticated socket: RSS of one gateway process before and after
opening N sockets (each authenticated, past session.ready, then idle).

    just bench connections        (COUNTS=1000,5000 to change)
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid

from websockets.asyncio.client import ClientConnection, connect

from bench._harness import SECRET, gateways, rss_bytes, services
from gateway.auth import issue_token

COUNTS = [int(n) for n in os.environ.get("COUNTS", "1000,5000").split(",")]


async def measure(dsn: str, redis_url: str, count: int) -> None:
    async with gateways(1, dsn, redis_url) as [(pid, port)]:
        await asyncio.sleep(1)
        before = rss_bytes(pid)
        sockets: list[ClientConnection] = []
        for n in range(count):
            patient = uuid.uuid4()  # one patient each: every socket has its own topic
            token = issue_token(SECRET, role="patient", sub=patient, device_id=f"d{n}")
            ws = await connect(
                f"ws://127.0.0.1:{port}/v1/ws",
                additional_headers={"Authorization": f"Bearer {token}"},
                ping_interval=None,
            )
            await ws.recv()  # session.ready
            sockets.append(ws)
        await asyncio.sleep(3)  # presence frames and renewals settle
        after = rss_bytes(pid)
        per_socket = (after - before) / count
        print(
            f"{count} idle sockets: gateway RSS {before / 2**20:.1f} MiB -> "
            f"{after / 2**20:.1f} MiB, {per_socket / 1024:.1f} KiB per socket"
        )
        for ws in sockets:
            await ws.close()


def main() -> None:
    print(f"idle sockets, one gateway process, {time.strftime('%Y-%m-%d')}")
    with services() as (dsn, redis_url, _):
        for count in COUNTS:
            asyncio.run(measure(dsn, redis_url, count))


if __name__ == "__main__":
    main()
