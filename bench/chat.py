"""Chat: the time to first token the gateway adds, the relay overhead per delta, and the
tokens/s that reach the slowest socket of a patient.

Two gateway processes share one Redis and the embedded PostgreSQL, which holds MEMORIES
(default 100,000) memories of 1536 dims of other patients. The patient of (a) has
OWN_MEMORIES (default 20,000) memories of their own, in their memory graph when that is
more than the exact-search limit, as the embedding worker would have made it. The
model is the test suite's fake OpenAI server (tests/fake_openai.py) in a process of its
own, stamping each token with the time it sent it; embeddings come from the same server.

(a) One patient, one socket on each process; EXCHANGES chat.sends one after another.
    The upstream waits 50 ms, then sends 12 tokens 25 ms apart (slower than the 20 ms
    coalescing window, so each token travels as its own delta), and the chunk that ends
    the stream FINISH_DELAY s (default 0.025) after the last one: a model that stops on
    its own samples an end-of-sequence token, one more decoding step. FINISH_DELAY=0 is
    the end right behind the last text (a reply cut at its length limit): the gateway's
    end-of-reply work (embedding, storing) then competes for the 2 cores with that last
    delta's delivery.
    Added time to first token = (first delta at the sender − chat.send sent) − (the
    upstream's first token sent − its request received): everything but the model's own
    wait (storing the message, the embedding call, retrieval, the prompt, the relay).
    Relay overhead = a delta's arrival at a socket − when its last token left the upstream.
(b) One patient, 4 sockets (2 per process); the upstream sends 500 tokens as fast as it
    can. Tokens/s at a socket = 500 / (arrival of the last token − the upstream's first
    token sent); the slowest socket counts. ROUNDS rounds.
(c) As (b) with PATIENTS patients (4 sockets each) chatting at once.

    just bench chat      (MEMORIES=100000 OWN_MEMORIES=20000 EXCHANGES=100 ROUNDS=5
                          PATIENTS=200 FINISH_DELAY=0.025 PHASES=abc to change)
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
import uuid
from dataclasses import dataclass, field

import asyncpg
import httpx
import orjson

from bench._harness import SECRET, gateways, percentile, services, stand_in_model
from bench._results import rounded, save
from bench._wsclient import ClientProtocol, open_client
from gateway.auth import issue_token
from storage.memories import exact_limit_for
from storage.memory_graphs import promote
from tests.support import bulk_memories

MEMORIES = int(os.environ.get("MEMORIES", "100000"))
OWN_MEMORIES = int(os.environ.get("OWN_MEMORIES", "20000"))
EXCHANGES = int(os.environ.get("EXCHANGES", "100"))
ROUNDS = int(os.environ.get("ROUNDS", "5"))
PATIENTS = int(os.environ.get("PATIENTS", "200"))
FINISH_DELAY = float(os.environ.get("FINISH_DELAY", "0.025"))
PHASES = os.environ.get("PHASES", "abc")  # which of (a), (b), (c) to run
BURST_TOKENS = 500
DIM = 1536
MEMORIES_PER_PATIENT = 100


@dataclass
class Device:
    connection: ClientProtocol | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    deltas: list[tuple[float, str]] = field(default_factory=list)  # (arrival, text)

    def on_text(self, payload: bytes) -> None:
        now = time.time()
        if payload.startswith(b'{"type":"chat.delta"'):
            self.deltas.append((now, orjson.loads(payload)["delta"]))
        elif payload.startswith(b'{"type":"chat.done"'):
            self.done.set()
        elif payload.startswith(b'{"type":"session.ready"'):
            self.ready.set()

    def reset(self) -> None:
        self.deltas.clear()
        self.done.clear()


@dataclass
class Stamps:
    received: float  # the upstream got the request
    sent: list[float]  # each token left the upstream


def stamps(text: str) -> Stamps:
    received, sent = 0.0, []
    for part in text.split():
        if part.startswith("R"):
            received = float(part[1:])
        else:
            sent.append(float(part))
    return Stamps(received, sent)


async def connect(port: int, patient: uuid.UUID, name: str) -> Device:
    device = Device()
    token = issue_token(SECRET, role="patient", sub=patient, device_id=name)
    device.connection = await open_client(port, token, device.on_text)
    await device.ready.wait()
    return device


def chat_send(device: Device, thread: uuid.UUID, text: str) -> float:
    assert device.connection is not None
    frame = {"type": "chat.send", "id": "c", "thread_id": str(thread), "text": text}
    sent = time.time()
    device.connection.send_text(orjson.dumps(frame))
    return sent


async def load_memories(dsn: str, count: int, own: int) -> tuple[uuid.UUID, float, float]:
    """`count` memories of other patients and `own` of one more (random vectors); (that
    patient, load s, their graph's build s)."""
    conn = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        patients = max(1, count // MEMORIES_PER_PATIENT)
        await bulk_memories(conn, patients, MEMORIES_PER_PATIENT, DIM)
        await bulk_memories(conn, 1, own, DIM)
        patient: uuid.UUID = await conn.fetchval(
            "SELECT patient_id FROM memories GROUP BY patient_id HAVING count(*) = $1", own
        )
        await conn.execute("VACUUM ANALYZE memories")
        loaded = time.perf_counter() - started
        started = time.perf_counter()
        if own > exact_limit_for(DIM):
            await promote(conn, patient)
        return patient, loaded, time.perf_counter() - started
    finally:
        await conn.close()


async def configure(http: httpx.AsyncClient, **behaviour: object) -> None:
    (await http.post("/behaviour", json=behaviour)).raise_for_status()


async def first_token_and_relay(
    http: httpx.AsyncClient, ports: list[int], patient: uuid.UUID
) -> tuple[list[float], list[float], list[float], list[float]]:
    """(a): added time to first token (ms); relay overhead (ms) at the sender's process,
    at the other process, and at both leaving out each reply's last delta."""
    await configure(
        http,
        tokens=["t"] * 12,
        first_token_delay_s=0.05,
        token_delay_s=0.025,
        finish_delay_s=FINISH_DELAY,
        stamp=True,
    )
    thread = uuid.uuid4()
    sender = await connect(ports[0], patient, "headset")
    other = await connect(ports[1], patient, "phone")
    added: list[float] = []
    relay_same: list[float] = []
    relay_other: list[float] = []
    relay_not_last: list[float] = []  # the last delta of a reply travels as the stream ends
    for n in range(EXCHANGES + 5):
        sender.reset()
        other.reset()
        sent = chat_send(sender, thread, f"Question {n}: my knee aches after walking")
        await sender.done.wait()
        await other.done.wait()
        if n < 5:
            continue  # warm-up: pool connections, prepared statements
        first_arrival, first_text = sender.deltas[0]
        upstream = stamps(first_text)
        added.append(((first_arrival - sent) - (upstream.sent[0] - upstream.received)) * 1000)
        for device, overheads in ((sender, relay_same), (other, relay_other)):
            for n, (arrival, text) in enumerate(device.deltas):
                overhead = (arrival - max(stamps(text).sent)) * 1000
                overheads.append(overhead)
                if n < len(device.deltas) - 1:
                    relay_not_last.append(overhead)
    return added, relay_same, relay_other, relay_not_last


async def burst(
    http: httpx.AsyncClient, patients: int, ports: list[int], rounds: int
) -> tuple[list[float], float]:
    """(b)/(c): tokens/s at each patient's slowest socket, per round; and the tokens
    delivered per second to all sockets together, over the whole run."""
    await configure(
        http,
        tokens=["t"] * BURST_TOKENS,
        first_token_delay_s=0.0,
        token_delay_s=0.0,
        finish_delay_s=0.0,
        stamp=True,
    )
    groups = []
    for n in range(patients):
        patient = uuid.uuid4()
        devices = [
            await connect(ports[0], patient, "a1"),
            await connect(ports[0], patient, "a2"),
            await connect(ports[1], patient, "b1"),
            await connect(ports[1], patient, "b2"),
        ]
        # Half the patients send from each process, so both relay replies.
        sender = devices[0] if n % 2 == 0 else devices[2]
        groups.append((sender, devices, uuid.uuid4()))
    rates: list[float] = []
    span = [float("inf"), 0.0]  # the first token sent, the last delta received (all rounds)
    for _ in range(rounds):
        for _, devices, _ in groups:
            for device in devices:
                device.reset()
        for sender, _, thread in groups:
            chat_send(sender, thread, "Tell me everything about pacing")
        for _, devices, _ in groups:
            slowest = float("inf")
            for device in devices:
                await device.done.wait()
                texts = "".join(text for _, text in device.deltas)
                upstream = stamps(texts)
                assert len(upstream.sent) == BURST_TOKENS, len(upstream.sent)
                elapsed = device.deltas[-1][0] - upstream.sent[0]
                slowest = min(slowest, BURST_TOKENS / elapsed)
                span = [min(span[0], upstream.sent[0]), max(span[1], device.deltas[-1][0])]
            rates.append(slowest)
    for _, devices, _ in groups:
        for device in devices:
            assert device.connection is not None
            device.connection.close()
    delivered = BURST_TOKENS * len(groups) * 4 * rounds / (span[1] - span[0])
    return rates, delivered


async def run(dsn: str, redis_url: str) -> None:
    print(f"chat benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs", flush=True)
    patient, loaded, built = await load_memories(dsn, MEMORIES, OWN_MEMORIES)
    print(
        f"{MEMORIES:,} memories of other patients and {OWN_MEMORIES:,} of (a)'s patient: "
        f"loaded in {loaded:.0f} s, that patient's memory graph built in {built:.0f} s",
        flush=True,
    )
    async with stand_in_model() as base:
        await run_phases(dsn, redis_url, base, patient)


async def run_phases(dsn: str, redis_url: str, base: str, patient: uuid.UUID) -> None:
    env = {
        "OPENAI_BASE_URL": f"{base}/v1",
        "OPENAI_API_KEY": "bench",
        "MODEL_NAME": "bench",
        "DB_POOL_MIN": "4",
    }
    async with (
        gateways(2, dsn, redis_url, **env) as processes,
        httpx.AsyncClient(base_url=base) as http,
    ):
        ports = [port for _, port in processes]
        raise_priority()
        gc.collect()
        gc.freeze()

        figures: dict[str, object] = {"memories": MEMORIES, "own_memories": OWN_MEMORIES}
        if "a" in PHASES:
            figures["a"] = await report_first_token_and_relay(http, ports, patient)
        if "b" in PHASES:
            figures["b"] = await report_burst(http, ports)
        if "c" in PHASES:
            figures["c"] = await report_crowd(http, ports)
        save("chat", figures)


def raise_priority() -> None:
    """The measuring clients (this process, once every server is started with the default
    priority) take a core first when they need one: they are idle most of the time, and
    on two shared cores their wait for a core would count as the gateway's latency."""
    try:
        os.nice(-10)
    except PermissionError:
        print("(could not raise the clients' priority: latencies include their waits)")


async def report_first_token_and_relay(
    http: httpx.AsyncClient, ports: list[int], patient: uuid.UUID
) -> dict[str, object]:
    added, same, other, not_last = await first_token_and_relay(http, ports, patient)
    print(
        f"(a) {EXCHANGES} exchanges, the stream's end {FINISH_DELAY * 1000:g} ms after its "
        f"last token: added time to first token p50 "
        f"{percentile(added, 50):.1f} ms, p99 {percentile(added, 99):.1f} ms; "
        f"relay overhead per delta p50/p99: sender's process "
        f"{percentile(same, 50):.2f}/{percentile(same, 99):.2f} ms, other process "
        f"{percentile(other, 50):.2f}/{percentile(other, 99):.2f} ms "
        f"({len(same) + len(other)} deltas); without each reply's last delta p99 "
        f"{percentile(not_last, 99):.2f} ms"
    )
    return {
        "added_first_token_ms": rounded(added),
        "relay_same_process_ms": rounded(same),
        "relay_other_process_ms": rounded(other),
    }


async def report_burst(http: httpx.AsyncClient, ports: list[int]) -> dict[str, object]:
    rates, _ = await burst(http, 1, ports, ROUNDS)
    print(
        f"(b) {BURST_TOKENS} tokens as fast as the upstream sends, 4 sockets of one "
        f"patient (2 per process), {ROUNDS} rounds: slowest socket median "
        f"{percentile(rates, 50):,.0f} tokens/s, worst {min(rates):,.0f} tokens/s"
    )
    return {"slowest_socket_tokens_per_s": rounded(rates, 1)}


async def report_crowd(http: httpx.AsyncClient, ports: list[int]) -> dict[str, object]:
    rates, delivered = await burst(http, PATIENTS, ports, 1)
    print(
        f"(c) {PATIENTS} patients at once ({PATIENTS * 4} sockets): slowest socket per "
        f"patient median {percentile(rates, 50):,.0f} tokens/s, p10 "
        f"{percentile(rates, 10):,.0f}, worst {min(rates):,.0f} tokens/s; "
        f"{delivered:,.0f} tokens/s delivered to all sockets together"
    )
    return {"slowest_socket_tokens_per_s": rounded(rates, 1), "delivered_per_s": delivered}


def main() -> None:
    with services() as (dsn, redis_url, _):
        asyncio.run(run(dsn, redis_url))


if __name__ == "__main__":
    main()
