"""A summary run over many threads with the offline (extractive) summariser: its time and
the process's peak memory.

THREADS threads (default 10,000) of PATIENTS patients (default 1,000), MESSAGES messages
each (default 8: the patient's and the assistant's turns), written in bulk outside the
change log into an embedded PostgreSQL; then one run of the summary job in this process,
as `painar-gateway summarize` does it (reading each thread, writing each summary through
the change log, embedding it offline and storing its memory), SUMMARY_CONCURRENCY at a
time. A second run over the same threads shows the cost of finding nothing to do.

    just bench summaries        (THREADS=10000 PATIENTS=1000 MESSAGES=8 to change)
"""

from __future__ import annotations

import asyncio
import os
import resource
import time

from bench._harness import services
from gateway.app import summary_job
from gateway.providers import make_models
from gateway.realtime.broker.memory import MemoryBroker
from gateway.realtime.hub import Hub
from gateway.sync.writes import ChangeWriter
from storage.database import Database, connect
from tests.support import make_settings

THREADS = int(os.environ.get("THREADS", "10000"))
PATIENTS = int(os.environ.get("PATIENTS", "1000"))
MESSAGES = int(os.environ.get("MESSAGES", "8"))
CONCURRENCY = int(os.environ.get("SUMMARY_CONCURRENCY", "2"))

SAID = [
    "My lower back hurts when I sit for more than an hour.",
    "I'm sorry it hurts. Does standing up and walking a little ease it?",
    "Walking helps a bit, but the pain comes back in the evening, about a 6 out of 10.",
    "Heat before bed and a short stretch might help you sleep.",
]


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def load(dsn: str) -> None:
    conn = await connect(dsn)
    try:
        await conn.execute(
            """
            INSERT INTO patients (id) SELECT gen_random_uuid() FROM generate_series(1, $1);
            """.replace("$1", str(PATIENTS))
        )
        await conn.execute(
            f"""
            INSERT INTO threads (id, patient_id, title)
            SELECT gen_random_uuid(), p.id, 'Back pain'
            FROM (SELECT id, row_number() OVER () AS n FROM patients) p,
                 generate_series(1, {THREADS // PATIENTS})
            """
        )
        said = "ARRAY[" + ",".join("'" + s.replace("'", "''") + "'" for s in SAID) + "]"
        await conn.execute(
            f"""
            INSERT INTO messages (id, patient_id, thread_id, role, content, source, created_at)
            SELECT gen_random_uuid(), t.patient_id, t.id,
                   CASE WHEN m % 2 = 1 THEN 'user' ELSE 'assistant' END,
                   ({said})[1 + (m - 1) % {len(SAID)}] || ' (' || m || ')', 'sync',
                   now() - interval '1 day' + m * interval '1 minute'
            FROM threads t, generate_series(1, {MESSAGES}) m
            """
        )
        await conn.execute("TRUNCATE embedding_queue")  # the memory worker is not measured
    finally:
        await conn.close()


def main() -> None:
    print(f"summaries benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs")
    with services() as (dsn, _, _):
        asyncio.run(measure(dsn))


async def measure(dsn: str) -> None:
    started = time.perf_counter()
    await load(dsn)
    print(
        f"{THREADS:,} threads of {PATIENTS:,} patients, {MESSAGES} messages each: "
        f"loaded in {time.perf_counter() - started:.1f} s"
    )
    settings = make_settings(
        summary_max_threads=THREADS, summary_concurrency=CONCURRENCY, db_pool_max=10
    )
    db = Database(dsn, min_size=2, max_size=2 + 2 * CONCURRENCY)
    await db.open()
    hub = Hub(MemoryBroker())
    models = make_models(settings)
    try:
        job = summary_job(settings, db, ChangeWriter(db, hub), models)
        before = peak_mib()
        began = time.perf_counter()
        result = await job.run()
        took = time.perf_counter() - began
        print(
            f"run: {result.summarized:,} summarised, {result.failed} failed in {took:.1f} s "
            f"({result.summarized / took:,.0f} threads/s, concurrency {CONCURRENCY}); "
            f"peak RSS of this process {peak_mib():.0f} MiB (before the run {before:.0f} MiB)"
        )
        began = time.perf_counter()
        again = await job.run()
        print(
            f"again: {again.summarized} summarised (nothing changed) in "
            f"{time.perf_counter() - began:.2f} s"
        )
    finally:
        await models.close()
        await hub.close()
        await db.close()


if __name__ == "__main__":
    main()
