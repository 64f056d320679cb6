"""Fan-out across two gateway processes through Redis to the sockets of one patient: 250,
500 and 1000 sockets, opened in steps within one run.

(a) at each step, bursts of 200 frames of ~200 bytes: deliveries per second, server CPU
    time per delivery (from the gateway processes' own CPU counters) and loss;
(b) at the last step, 5 frames per second for 20 s: per-delivery latency from publish to
    the client.

Then the same against two processes of the floor (bench/floor.py, a bare Starlette +
redis-py relay) on the same Redis, and the ratios gateway ÷ floor.

With CLUSTER=1, instead of the floor: the gateway on one Redis, then on a Redis Cluster of
three masters (sharded pub/sub, tests/rediscluster.py makes it), and the ratios cluster ÷
one Redis: what sharding costs a delivery. One patient's topic lives on one shard, so this
measures cost, not the capacity more shards add (they would share these two cores).

Frames are published the way a gateway's hub publishes them (an envelope on the
patient's Redis channel). The clients (a lean raw-frame client, bench/_wsclient.py) run in this
process, on the same 2 cores.

    just bench fanout        (SOCKETS=250,500,1000 BURST=200 PACED_SECONDS=20 to change;
                              CLUSTER=1 for one Redis against a cluster)
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

from bench._harness import SECRET, cpu_seconds, floors, gateways, percentile, services
from bench._results import rounded, save
from bench._wsclient import open_client
from gateway.auth import issue_token
from gateway.realtime.broker import Broker
from gateway.realtime.broker.choose import broker_for
from gateway.realtime.hub import envelope, patient_topic
from protocol.codec import encode
from protocol.frames import ChatDelta

STEPS = [int(n) for n in os.environ.get("SOCKETS", "250,500,1000").split(",")]
BURST = int(os.environ.get("BURST", "200"))
PACED_SECONDS = float(os.environ.get("PACED_SECONDS", "20"))
PACED_RATE = 5.0
REPEATS = int(os.environ.get("REPEATS", "5"))


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


DELTA = b'"delta":"'


class Client:
    """Counts chat.delta frames and their latency, reading only what it needs."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.latencies: list[float] = []

    def on_text(self, payload: bytes) -> None:
        received = time.time()
        if not payload.startswith(b'{"type":"chat.delta"'):
            return
        at = payload.index(DELTA) + len(DELTA)
        sent = float(payload[at : payload.index(b" ", at)])
        seq_at = payload.index(b'"seq":') + 6
        self.seqs.append(int(payload[seq_at : payload.index(b",", seq_at)]))
        self.latencies.append(received - sent)


Wait = Callable[[int, float], Awaitable[None]]


async def bursts(
    publisher: Broker,
    topic: str,
    patient: uuid.UUID,
    clients: list[Client],
    procs: list[tuple[int, int]],
    wait_for: Wait,
) -> dict[str, object]:
    """(a) at one step: the figure is the median of REPEATS, since one run varies with how
    the clients (on the same cores) keep up."""
    sockets = len(clients)
    rates: list[float] = []
    costs: list[float] = []
    lost, in_order = 0, True
    for _ in range(REPEATS):
        for c in clients:
            c.seqs.clear()
        cpu_before = sum(cpu_seconds(pid) for pid, _ in procs)
        started = time.perf_counter()
        for seq in range(BURST):
            await publisher.publish(topic, frame(patient, seq))
        await wait_for(BURST * sockets, 120)
        elapsed = time.perf_counter() - started
        cpu = sum(cpu_seconds(pid) for pid, _ in procs) - cpu_before
        delivered = sum(len(c.seqs) for c in clients)
        lost += BURST * sockets - delivered
        in_order = in_order and all(c.seqs == list(range(BURST)) for c in clients)
        rates.append(delivered / elapsed)
        costs.append(cpu * 1e6 / max(delivered, 1))
        await asyncio.sleep(1)
    print(
        f"(a) {sockets} sockets, {REPEATS} bursts of {BURST}: {lost} lost, in order: "
        f"{in_order}; deliveries/s median {statistics.median(rates):,.0f} "
        f"(runs {', '.join(f'{r:,.0f}' for r in rates)}); server CPU per delivery "
        f"median {statistics.median(costs):.1f} µs "
        f"(runs {', '.join(f'{c:.1f}' for c in costs)})",
        flush=True,
    )
    return {
        "sockets": sockets,
        "lost": lost,
        "in_order": in_order,
        "deliveries_per_s": rounded(rates, 0),
        "cpu_us_per_delivery": rounded(costs, 2),
    }


async def measure(label: str, procs: list[tuple[int, int]], redis_url: str) -> dict[str, object]:
    """(a) at every step of sockets, then (b), against `procs` (gateways or floors)."""
    patient = uuid.uuid4()
    clients: list[Client] = []
    connections = []
    publisher = broker_for(redis_url)
    topic = patient_topic(patient)

    async def wait_for(total: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while sum(len(c.seqs) for c in clients) < total and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    print(
        f"{label}: sockets {', '.join(map(str, STEPS))} over 2 processes, "
        f"{time.strftime('%Y-%m-%d')}",
        flush=True,
    )
    steps = []
    for sockets in STEPS:
        for n in range(len(clients), sockets):
            _, port = procs[n % 2]
            token = issue_token(SECRET, role="patient", sub=patient, device_id=f"d{n}")
            client = Client()
            connections.append(await open_client(port, token, client.on_text))
            clients.append(client)
        await asyncio.sleep(3)  # let session.ready and presence traffic settle
        steps.append(await bursts(publisher, topic, patient, clients, procs, wait_for))

    # (b) paced, at the last step
    sockets = len(clients)
    for c in clients:
        c.seqs.clear()
        c.latencies.clear()
    count = int(PACED_SECONDS * PACED_RATE)
    for seq in range(count):
        await publisher.publish(topic, frame(patient, seq))
        await asyncio.sleep(1 / PACED_RATE)
    await wait_for(count * sockets, 30)
    latencies = [x * 1000 for c in clients for x in c.latencies]
    delivered = len(latencies)
    print(
        f"(b) paced {PACED_RATE:.0f} frames/s for {PACED_SECONDS:.0f} s to {sockets} "
        f"sockets: {delivered}/{count * sockets} delivered, "
        f"latency p50 {percentile(latencies, 50):.1f} ms, "
        f"p95 {percentile(latencies, 95):.1f} ms, p99 {percentile(latencies, 99):.1f} ms",
        flush=True,
    )
    await publisher.close()
    for connection in connections:
        connection.close()
    return {
        "bursts": steps,
        "paced": {
            "sockets": sockets,
            "frames_per_s": PACED_RATE,
            "seconds": PACED_SECONDS,
            "p99_ms": round(percentile(latencies, 99), 2),
            # Every tenth of the sorted samples: the distribution, a tenth the size.
            "latencies_ms": rounded(sorted(latencies)[::10]),
        },
    }


def median(values: object) -> float:
    assert isinstance(values, list)
    return float(statistics.median(values))


async def measure_gateway(label: str, dsn: str, redis_url: str) -> dict[str, object]:
    # One patient's sockets, far past the per-patient cap a deployment runs with.
    cap = str(max(STEPS) + 10)
    async with gateways(
        2, dsn, redis_url, SEND_QUEUE_FRAMES="5000", MAX_SOCKETS_PER_PATIENT=cap
    ) as procs:
        return await measure(label, procs, redis_url)


def print_ratios(name: str, ours: dict[str, object], theirs: dict[str, object]) -> None:
    for a, b in zip(ours["bursts"], theirs["bursts"], strict=True):  # type: ignore[call-overload]
        print(
            f"ratio {name} at {a['sockets']} sockets: deliveries/s "
            f"{median(a['deliveries_per_s']) / median(b['deliveries_per_s']):.2f}, "
            f"CPU per delivery "
            f"{median(a['cpu_us_per_delivery']) / median(b['cpu_us_per_delivery']):.2f}"
        )
    paced = ours["paced"]["p99_ms"] / theirs["paced"]["p99_ms"]  # type: ignore[index]
    print(f"ratio {name}, paced p99: {paced:.2f}")


async def run(dsn: str, redis_url: str) -> None:
    gateway = await measure_gateway("gateway", dsn, redis_url)
    # The floor (bench/floor.py) on the same Redis, right after: the ratio is the figure.
    async with floors(2, redis_url) as procs:
        floor = await measure("floor", procs, redis_url)
    print_ratios("gateway ÷ floor", gateway, floor)
    save("fanout", {"gateway": gateway, "floor": floor})


async def run_cluster(dsn: str, redis_url: str, cluster_url: str) -> None:
    single = await measure_gateway("gateway, one Redis", dsn, redis_url)
    sharded = await measure_gateway("gateway, Redis Cluster", dsn, cluster_url)
    print_ratios("cluster ÷ one Redis", sharded, single)
    save("fanout-cluster", {"single": single, "cluster": sharded})


def main() -> None:
    with services() as (dsn, redis_url, _):
        if os.environ.get("CLUSTER") != "1":
            asyncio.run(run(dsn, redis_url))
            return
        from tests.rediscluster import RedisClusterNodes

        cluster = RedisClusterNodes(masters=3, replicas=0)
        try:
            cluster.start()
            asyncio.run(run_cluster(dsn, redis_url, cluster.url))
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
