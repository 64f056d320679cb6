"""Observation: one patient's replies watched by OBSERVERS clinician sockets across two
gateway processes, delivery latency to the observers against the patient's own devices,
measured in the same run.

Two gateway processes, Redis, the embedded PostgreSQL; the model is the suite's stand-in
server in a process of its own, stamping each token with the time it sent it. The
patient has a device on each process (one sends); half the clinicians connect to each
process and observe the patient. EXCHANGES chat.sends one after another (after 3
unmeasured), each answered with 12 tokens 25 ms apart. Latency = a delta's arrival at a
socket − when its last token left the stand-in (the relay overhead of bench/chat.py).

    just bench observe     (OBSERVERS=50 EXCHANGES=30 to change)
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import asyncpg
import orjson

from bench._harness import SECRET, gateways, percentile, services, stand_in_model
from bench._wsclient import ClientProtocol, open_client
from gateway.auth import issue_token

OBSERVERS = int(os.environ.get("OBSERVERS", "50"))
EXCHANGES = int(os.environ.get("EXCHANGES", "30"))
TOKENS = 12


class Socket:
    def __init__(self) -> None:
        self.connection: ClientProtocol | None = None
        self.latencies: list[float] = []
        self.frames: asyncio.Queue[dict[str, object]] = asyncio.Queue()
        self.done = asyncio.Event()
        self.measuring = False

    def on_text(self, payload: bytes) -> None:
        now = time.time()
        if payload.startswith(b'{"type":"chat.delta"'):
            if self.measuring:
                stamps = [float(p) for p in orjson.loads(payload)["delta"].split() if p[0] != "R"]
                self.latencies.append((now - max(stamps)) * 1000)
        elif payload.startswith(b'{"type":"chat.done"'):
            self.done.set()
        elif not payload.startswith(b'{"type":"presence"'):
            self.frames.put_nowait(orjson.loads(payload))

    async def next(self, kind: str) -> dict[str, object]:
        while True:
            frame = await self.frames.get()
            if frame["type"] == kind:
                return frame

    def send(self, frame: dict[str, object]) -> None:
        assert self.connection is not None
        self.connection.send_text(orjson.dumps(frame))


async def connect(port: int, token: str) -> Socket:
    socket = Socket()
    socket.connection = await open_client(port, token, socket.on_text)
    await socket.next("session.ready")
    return socket


async def run(dsn: str, redis_url: str) -> None:
    print(f"observe benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs", flush=True)
    patient, thread = uuid.uuid4(), uuid.uuid4()
    clinicians = [uuid.uuid4() for _ in range(OBSERVERS)]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(
            "INSERT INTO care_team (clinician_id, patient_id, granted_by) VALUES ($1, $2, $1)",
            [(c, patient) for c in clinicians],
        )
    finally:
        await conn.close()
    behaviour = {
        "tokens": ["t"] * TOKENS,
        "first_token_delay_s": 0.05,
        "token_delay_s": 0.025,
        "finish_delay_s": 0.025,
        "stamp": True,
    }
    async with stand_in_model(**behaviour) as base:
        async with gateways(2, dsn, redis_url, OPENAI_BASE_URL=f"{base}/v1") as processes:
            ports = [port for _, port in processes]
            token = issue_token(SECRET, role="patient", sub=patient, device_id="headset")
            devices = [await connect(ports[0], token)]
            phone = issue_token(SECRET, role="patient", sub=patient, device_id="phone")
            devices.append(await connect(ports[1], phone))
            observers = []
            for n, clinician in enumerate(clinicians):
                socket = await connect(
                    ports[n % 2], issue_token(SECRET, role="clinician", sub=clinician)
                )
                socket.send({"type": "observe", "id": "o", "patient_id": str(patient)})
                await socket.next("observe.snapshot")
                observers.append(socket)
            everyone = devices + observers
            for n in range(EXCHANGES + 3):
                for socket in everyone:
                    socket.done.clear()
                    socket.measuring = n >= 3  # warm-up first
                devices[0].send(
                    {"type": "chat.send", "id": "c", "thread_id": str(thread), "text": f"q{n}"}
                )
                await asyncio.gather(*(s.done.wait() for s in everyone))
            device_ms = [x for s in devices for x in s.latencies]
            observer_ms = [x for s in observers for x in s.latencies]
            ratio = percentile(observer_ms, 99) / percentile(device_ms, 99)
            print(
                f"{OBSERVERS} observers over 2 processes, {EXCHANGES} replies of {TOKENS} "
                f"deltas: devices {_p(device_ms)}; observers {_p(observer_ms)}; "
                f"observers' p99 / devices' p99 = {ratio:.2f}",
                flush=True,
            )
            for socket in everyone:
                assert socket.connection is not None
                socket.connection.close()


def _p(samples: list[float]) -> str:
    return (
        f"p50 {percentile(samples, 50):.2f} / p99 {percentile(samples, 99):.2f} ms "
        f"({len(samples)} deltas)"
    )


def main() -> None:
    with services() as (dsn, redis_url, _):
        asyncio.run(run(dsn, redis_url))


if __name__ == "__main__":
    main()
