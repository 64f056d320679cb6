"""Fan-out across two gateway processes through Redis to 1000 sockets of one patient.

(a) a burst of 200 frames of ~200 bytes: deliveries per second, server CPU time per
    delivery (from the gateway processes' own CPU counters) and loss;
(b) 5 frames per second for 20 s: per-delivery latency from publish to the client.

Frames are published the way a gateway's hub publishes them (an envelope on the
patient's Redis channel). The clients run in this process, on the same 2 cores.

    just bench fanout        (SOCKETS=1000 BURST=200 PACED_SECONDS=20 to change)
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import orjson
from websockets.asyncio.client import ClientConnection, connect

from bench._harness import SECRET, cpu_seconds, gateways, percentile, services
from gateway.auth import issue_token
from gateway.broker.redis import RedisBroker
from gateway.hub import envelope, patient_topic
from protocol.codec import encode
from protocol.frames import ChatDelta

SOCKETS = int(os.environ.get("SOCKETS", "1000"))
BURST = int(os.environ.get("BURST", "200"))
PACED_SECONDS = float(os.environ.get("PACED_SECONDS", "20"))
PACED_RATE = 5.0


def frame(patient: uuid.UUID, seq: int) -> bytes:
    # ~200 bytes on the wire; the delta carries the publish time for the latency figure.
    delta = f"{time.time():.6f} " + "w" * 40
    message = ChatDelta(
        patient_id=patient,
        thread_id=uuid.UUID(int=1),
        response_id=uuid.UUID(int=2),
        seq=seq,
        delta=delta,
    )
    return envelope(message.type, encode(message))


class Client:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seqs: list[int] = []
        self.latencies: list[float] = []

    async def read(self) -> None:
        async for message in self.ws:
            received = time.time()
            data = orjson.loads(message)
            if data["type"] == "chat.delta":
                self.seqs.append(data["seq"])
                self.latencies.append(received - float(data["delta"].split(" ", 1)[0]))


async def run(dsn: str, redis_url: str) -> None:
    async with gateways(2, dsn, redis_url, SEND_QUEUE_FRAMES="5000") as procs:
        patient = uuid.uuid4()
        clients: list[Client] = []
        for n in range(SOCKETS):
            _, port = procs[n % 2]
            token = issue_token(SECRET, role="patient", sub=patient, device_id=f"d{n}")
            ws = await connect(
                f"ws://127.0.0.1:{port}/v1/ws",
                additional_headers={"Authorization": f"Bearer {token}"},
                max_queue=None,
                ping_interval=None,
            )
            clients.append(Client(ws))
        readers = [asyncio.create_task(c.read()) for c in clients]
        await asyncio.sleep(3)  # let session.ready and presence traffic settle
        publisher = RedisBroker(redis_url)
        topic = patient_topic(patient)

        async def wait_for(total: int, timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while sum(len(c.seqs) for c in clients) < total and time.monotonic() < deadline:
                await asyncio.sleep(0.01)

        # (a) burst
        cpu_before = sum(cpu_seconds(pid) for pid, _ in procs)
        started = time.perf_counter()
        for seq in range(BURST):
            await publisher.publish(topic, frame(patient, seq))
        await wait_for(BURST * SOCKETS, 120)
        elapsed = time.perf_counter() - started
        cpu = sum(cpu_seconds(pid) for pid, _ in procs) - cpu_before
        delivered = sum(len(c.seqs) for c in clients)
        in_order = all(c.seqs == list(range(BURST)) for c in clients)
        print(
            f"sockets {SOCKETS} over 2 gateway processes, Redis pub/sub, "
            f"{time.strftime('%Y-%m-%d')}"
        )
        print(
            f"(a) burst of {BURST}: {delivered}/{BURST * SOCKETS} delivered "
            f"({BURST * SOCKETS - delivered} lost), in order: {in_order}, "
            f"{delivered / elapsed:,.0f} deliveries/s, "
            f"server CPU {cpu * 1e6 / max(delivered, 1):.1f} µs per delivery"
        )

        # (b) paced
        for c in clients:
            c.seqs.clear()
            c.latencies.clear()
        count = int(PACED_SECONDS * PACED_RATE)
        for seq in range(count):
            await publisher.publish(topic, frame(patient, seq))
            await asyncio.sleep(1 / PACED_RATE)
        await wait_for(count * SOCKETS, 30)
        latencies = [x * 1000 for c in clients for x in c.latencies]
        delivered = len(latencies)
        print(
            f"(b) paced {PACED_RATE:.0f} frames/s for {PACED_SECONDS:.0f} s: "
            f"{delivered}/{count * SOCKETS} delivered, "
            f"latency p50 {percentile(latencies, 50):.1f} ms, "
            f"p95 {percentile(latencies, 95):.1f} ms, p99 {percentile(latencies, 99):.1f} ms"
        )
        await publisher.close()
        for c in clients:
            await c.ws.close()
        for r in readers:
            r.cancel()


def main() -> None:
    with services() as (dsn, redis_url, _):
        asyncio.run(run(dsn, redis_url))


if __name__ == "__main__":
    main()
