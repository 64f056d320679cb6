"""Change-log write throughput and latency (storage.changes.apply_mutations).

Runs against an embedded PostgreSQL in a temporary directory (or BENCH_DATABASE_URL, a
server with pgvector where this may create a database), with default durability
(synchronous_commit on). Prints one line per scenario.

    just bench changes
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench._harness import percentile
from storage.changes import MessageData, Mutation, ThreadData, apply_mutations
from storage.database import connect, prepare_schema
from storage.embedded import EmbeddedPostgres


def report(name: str, writes: int, elapsed: float, latencies: list[float]) -> None:
    ms = sorted(x * 1000 for x in latencies)
    print(
        f"{name:<44} {writes / elapsed:8.0f} mutations/s   "
        f"p50 {statistics.median(ms):6.2f} ms   p99 {percentile(ms, 99):6.2f} ms"
    )


async def writers(dsn: str, count: int, per_writer: int, same_patient: bool) -> None:
    shared = uuid.uuid4()
    latencies: list[float] = []

    async def writer(n: int) -> None:
        patient = shared if same_patient else uuid.uuid4()
        conn = await connect(dsn)
        try:
            thread = Mutation("thread", "upsert", uuid.uuid4(), ThreadData("bench"))
            await apply_mutations(conn, patient, [thread], device_id=f"d{n}")
            for i in range(per_writer):
                data = MessageData(thread.id, "user", "x" * 200)
                m = Mutation("message", "upsert", uuid.uuid4(), data, f"m{i}")
                started = time.perf_counter()
                await apply_mutations(conn, patient, [m], device_id=f"d{n}")
                latencies.append(time.perf_counter() - started)
        finally:
            await conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(writer(n) for n in range(count)))
    elapsed = time.perf_counter() - started
    who = "one patient" if same_patient else "one patient each"
    report(f"{count} writer(s), {who}, 1 mutation/call", count * per_writer, elapsed, latencies)


async def batches(dsn: str, batch: int, rounds: int) -> None:
    patient = uuid.uuid4()
    conn = await connect(dsn)
    latencies: list[float] = []
    try:
        thread = Mutation("thread", "upsert", uuid.uuid4(), ThreadData("bench"))
        await apply_mutations(conn, patient, [thread], device_id="d")
        started = time.perf_counter()
        for r in range(rounds):
            ms = [
                Mutation(
                    "message",
                    "upsert",
                    uuid.uuid4(),
                    MessageData(thread.id, "user", "x" * 200),
                    f"r{r}-{i}",
                )
                for i in range(batch)
            ]
            t0 = time.perf_counter()
            await apply_mutations(conn, patient, ms, device_id="d")
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
    finally:
        await conn.close()
    report(f"1 writer, batches of {batch} (latency per batch)", batch * rounds, elapsed, latencies)


async def run(server_dsn: str) -> None:
    name = "bench_" + secrets.token_hex(4)
    admin = await asyncpg.connect(server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = urlunsplit(urlsplit(server_dsn)._replace(path="/" + name))
    try:
        await prepare_schema(dsn, vector_dim=1536)
        await writers(dsn, 1, 2000, same_patient=True)
        await writers(dsn, 8, 250, same_patient=True)
        await writers(dsn, 8, 250, same_patient=False)
        await batches(dsn, 500, 10)
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    print(f"change log, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    external = os.environ.get("BENCH_DATABASE_URL")
    if external:
        asyncio.run(run(external))
        return
    with tempfile.TemporaryDirectory() as directory, EmbeddedPostgres(Path(directory)) as dsn:
        asyncio.run(run(dsn))


if __name__ == "__main__":
    main()
