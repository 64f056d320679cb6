"""Sync across two gateway processes: device-to-device delta latency at a paced rate,
and the highest push rate sustained.

PATIENTS patients each have a pushing device on process 1 and a receiving device on
process 2. (a) The pushers together send RATE mutations/s (one mutation per sync.push,
evenly spread) for SECONDS, after a 2 s warm-up at that rate that is not measured; each
mutation's content carries its send time, and the receiver's clock at the sync.delta
gives the latency. (b) Every pusher sends as fast as it can with WINDOW pushes in flight
for SECONDS; acked mutations/s is the sustained rate.

    just bench sync        (PATIENTS=10 RATE=500 SECONDS=10 WINDOW=8 to change)
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
import uuid
from collections.abc import Mapping

import orjson

from bench._harness import SECRET, cpu_seconds, gateways, machine_busy, percentile, services
from bench._wsclient import ClientProtocol, open_client
from gateway.auth import issue_token

PATIENTS = int(os.environ.get("PATIENTS", "10"))
RATE = float(os.environ.get("RATE", "500"))
SECONDS = float(os.environ.get("SECONDS", "10"))
WINDOW = int(os.environ.get("WINDOW", "8"))
WARMUP_SECONDS = 2.0


class Pusher:
    def __init__(self, patient: uuid.UUID) -> None:
        self.patient = patient
        self.thread = str(uuid.uuid4())
        self.serial = 0
        self.acked = 0
        self.in_flight = 0
        self.ready = asyncio.Event()
        self.acks = asyncio.Event()
        self.connection: ClientProtocol | None = None

    def on_text(self, payload: bytes) -> None:
        if payload.startswith(b'{"type":"sync.ack"'):
            self.acked += 1
            self.in_flight -= 1
            self.acks.set()
        elif payload.startswith(b'{"type":"session.ready"'):
            self.ready.set()

    def push(self, mutation: Mapping[str, object]) -> None:
        assert self.connection is not None
        self.serial += 1
        self.in_flight += 1
        frame = {"type": "sync.push", "id": f"p{self.serial}", "mutations": [mutation]}
        self.connection.send_text(orjson.dumps(frame))

    def message(self) -> dict[str, object]:
        return {
            "mutation_id": f"m{self.serial}",
            "entity": "message",
            "op": "upsert",
            "id": str(uuid.uuid4()),
            "data": {"thread_id": self.thread, "role": "user", "content": f"{time.time():.6f}"},
        }


class Receiver:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.ready = asyncio.Event()

    def on_text(self, payload: bytes) -> None:
        now = time.time()
        if payload.startswith(b'{"type":"sync.delta"'):
            for change in orjson.loads(payload)["changes"]:
                if change["entity"] == "message":
                    self.latencies.append(now - float(change["data"]["content"]))
        elif payload.startswith(b'{"type":"session.ready"'):
            self.ready.set()


async def run(dsn: str, redis_url: str) -> None:
    # (b) keeps WINDOW pushes in flight per device: more than a patient may have written
    # at once by default (MAX_WRITES_PER_PATIENT), so the cap is raised to the window.
    env = {"MAX_WRITES_PER_PATIENT": str(WINDOW)}
    # and pushes faster than one patient's frame budget allows (20 writes/s): this
    # measures the write path's capacity, not the fair-share limits.
    env |= {"PATIENT_FRAMES_PER_S": "1000000", "PATIENT_BURST": "1000000"}
    async with gateways(2, dsn, redis_url, **env) as [(pid_a, port_a), (pid_b, port_b)]:
        pushers, receivers = [], []
        for _ in range(PATIENTS):
            patient = uuid.uuid4()
            pusher, receiver = Pusher(patient), Receiver()
            token_a = issue_token(SECRET, role="patient", sub=patient, device_id="pusher")
            token_b = issue_token(SECRET, role="patient", sub=patient, device_id="receiver")
            pusher.connection = await open_client(port_a, token_a, pusher.on_text)
            await open_client(port_b, token_b, receiver.on_text)
            await pusher.ready.wait()
            await receiver.ready.wait()
            thread = {
                "mutation_id": "t",
                "entity": "thread",
                "op": "upsert",
                "id": pusher.thread,
                "data": {"title": "bench"},
            }
            pusher.push(thread)
            pushers.append(pusher)
            receivers.append(receiver)
        await asyncio.sleep(2)
        for receiver in receivers:
            receiver.latencies.clear()
        # The load generator's own collector pauses would show up as delivery latency.
        gc.collect()
        gc.freeze()

        async def paced(seconds: float) -> int:
            total = int(RATE * seconds)
            started = time.perf_counter()
            for i in range(total):
                delay = started + i / RATE - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                pusher = pushers[i % PATIENTS]
                pusher.push(pusher.message())
            deadline = time.monotonic() + 30
            while sum(len(r.latencies) for r in receivers) < total and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return total

        # Warm-up, not measured: the pools open their connections (and each new database
        # session compiles the write function) during the first second of load.
        await paced(WARMUP_SECONDS)
        for receiver in receivers:
            receiver.latencies.clear()

        # (a) paced
        total = await paced(SECONDS)
        latencies = [x * 1000 for r in receivers for x in r.latencies]
        print(
            f"sync, {PATIENTS} patients, pusher on process 1, receiver on process 2, "
            f"{time.strftime('%Y-%m-%d')}"
        )
        print(
            f"(a) {RATE:.0f} mutations/s for {SECONDS:.0f} s: {len(latencies)}/{total} delivered, "
            f"device-to-device p50 {percentile(latencies, 50):.1f} ms, "
            f"p95 {percentile(latencies, 95):.1f} ms, p99 {percentile(latencies, 99):.1f} ms"
        )

        # (b) as fast as possible, WINDOW pushes in flight per pusher
        await asyncio.sleep(1)
        before = sum(p.acked for p in pushers)
        stop = time.perf_counter() + SECONDS

        async def saturate(pusher: Pusher) -> None:
            while time.perf_counter() < stop:
                while pusher.in_flight < WINDOW:
                    pusher.push(pusher.message())
                pusher.acks.clear()
                await pusher.acks.wait()

        cpu_before = [cpu_seconds(pid_a), cpu_seconds(pid_b)]
        machine_before = machine_busy()
        started = time.perf_counter()
        await asyncio.gather(*(saturate(p) for p in pushers))
        elapsed = time.perf_counter() - started
        acked = sum(p.acked for p in pushers) - before
        cpu_a = (cpu_seconds(pid_a) - cpu_before[0]) * 1e6 / max(acked, 1)
        cpu_b = (cpu_seconds(pid_b) - cpu_before[1]) * 1e6 / max(acked, 1)
        busy = (machine_busy() - machine_before) / elapsed / (os.cpu_count() or 1)
        print(
            f"(b) sustained: {acked / elapsed:,.0f} mutations/s acked "
            f"({PATIENTS} pushers, {WINDOW} pushes in flight each, 1 mutation per push); "
            f"gateway CPU per mutation: pushing process {cpu_a:.0f} µs, relaying process "
            f"{cpu_b:.0f} µs; machine {busy:.0%} busy"
        )


def main() -> None:
    with services() as (dsn, redis_url, _):
        asyncio.run(run(dsn, redis_url))


if __name__ == "__main__":
    main()
