"""Per-patient nearest-neighbour retrieval as the gateway runs it: exact search of the
patient's rows up to `storage.memories.exact_limit_for(dim)` memories, and above it the
patient's own memory graph (storage/memory_graphs.py, an HNSW index over their vectors
only), checked against the targets recall@10 ≥ TARGET_RECALL at p99 ≤ TARGET_P99_MS for
two kinds of query.

Two scenarios, each in its own database with our schema (sql/, VECTOR_DIM set to the
scenario's size): (a) 100,000 memories of 1536 dims, (b) 1,000,000 memories of 384 dims.
In each, a few patients of every measured size (10, 100, 700, 1,000, 2,000, 5,000,
20,000 and, in (b), 50,000 memories: 2,000 is the shipped limit, so it has a measured
size at it and some above) and the other rows spread over many patients of 1–199
memories, loaded in random order (a patient's rows are scattered over the table as they
would be after months of use), generated in SQL.

Data: a memory is l2_normalize(topic + patient + noise), three random Gaussian vectors of
norm ≈ 1 each, one of TOPICS topics shared by all patients: a patient's memories on one
topic have cosine ≈ 2/3, on others ≈ 1/3, and every other patient's memories on the
query's topic ≈ 1/3 too. Two kinds of query: "own", a new memory of the patient drawn
the same way (what the chat's retrieval mostly sends), and "random", a random unit
vector: a question on a topic the patient never raised, near nothing of theirs, where
the right memories differ from the next ones by very little (the hard case for any
approximate search).

Each row runs its queries through `storage.memories.nearest_memories` with k = 10 on a
fresh connection after 10 unmeasured ones. First every size is measured before any
patient has a graph ("exact": the reference for recall); then the patients above the
limit are promoted as the embedding worker promotes them (timed), and every size is
measured again ("gateway": unchanged up to the limit, the graph above it, with
`hnsw.ef_search` = graph_ef_search(size)); where that is capped below pgvector's largest,
the row "graph ef=N" shows what the larger list would buy. Latency is one call,
including its lookups.

Runs against an embedded PostgreSQL in a temporary directory, restarted once with
shared_buffers = SHARED_BUFFERS (or BENCH_DATABASE_URL, a server with pgvector where this
may create databases; its settings are used as they are). Run it niced when sharing the
machine:

    nice -n 19 .venv/bin/python -m bench.retrieval [--scenario 1536|384|all] [--queries N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench._harness import percentile
from bench._results import cpu_model, save
from storage import memories, memory_graphs
from storage.database import connect, prepare_schema
from storage.embedded import EmbeddedPostgres

K = 10
TOPICS = 100
FILLER_MAX = 199  # the other patients have 1..FILLER_MAX memories each
WARMUP = 10
PGVECTOR_EF_MAX = 1000
TARGET_RECALL = 0.95
TARGET_P99_MS = 15.0
SHARED_BUFFERS = "6GB"
SEED = 20261126


@dataclass(frozen=True)
class Scenario:
    dim: int
    rows: int
    # (memories per patient, how many such patients are measured)
    groups: tuple[tuple[int, int], ...]


SCENARIOS = {
    "1536": Scenario(
        1536,
        100_000,
        ((10, 20), (100, 20), (700, 10), (1000, 10), (2000, 4), (5000, 4), (20000, 1)),
    ),
    "384": Scenario(
        384,
        1_000_000,
        (
            (10, 20),
            (100, 20),
            (700, 10),
            (1000, 10),
            (2000, 10),
            (5000, 4),
            (20000, 2),
            (50000, 1),
        ),
    ),
}


def shrink(scenario: Scenario, rows: int) -> Scenario:
    groups: list[tuple[int, int]] = []
    for size, count in scenario.groups:
        if sum(s * c for s, c in groups) + size * count <= rows * 3 // 4:
            groups.append((size, count))
    return Scenario(scenario.dim, rows, tuple(groups))


@dataclass
class Patient:
    idx: int
    id: uuid.UUID
    thread: uuid.UUID
    size: int


@dataclass
class Cell:
    size: int
    kind: str
    strategy: str
    latencies_ms: list[float] = field(default_factory=list)
    recalls: list[float] = field(default_factory=list)
    short: int = 0

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 99)

    @property
    def recall(self) -> float:
        return statistics.fmean(self.recalls) if self.recalls else 1.0


def plan_patients(scenario: Scenario, rng: random.Random) -> tuple[list[Patient], int]:
    """The measured patients first (by size), then filler patients up to the row count."""
    patients: list[Patient] = []

    def add(size: int) -> None:
        patients.append(
            Patient(
                len(patients) + 1,
                uuid.UUID(int=rng.getrandbits(128), version=4),
                uuid.UUID(int=rng.getrandbits(128), version=4),
                size,
            )
        )

    for size, count in scenario.groups:
        for _ in range(count):
            add(size)
    measured = len(patients)
    left = scenario.rows - sum(p.size for p in patients)
    if left < 0:
        raise SystemExit(f"{scenario.rows} rows are fewer than the measured patients need")
    while left > 0:
        size = min(left, rng.randint(1, FILLER_MAX))
        add(size)
        left -= size
    return patients, measured


def noise_sql(dim: int, scale: str, row: str) -> str:
    """A Gaussian vector of norm ≈ 1 (`row` makes the subquery correlated, so it is
    evaluated for every row instead of once)."""
    return (
        f"(SELECT array_agg(random_normal(0, {scale})) "
        f"FROM generate_series(1, {dim} + 0 * {row}))::vector"
    )


async def loader(dsn: str, seed: float) -> asyncpg.Connection:
    """A connection for bulk loading: no foreign-key triggers, room to sort, `random()`
    seeded so a run's data can be made again."""
    conn = await asyncpg.connect(dsn)
    await conn.execute("SET session_replication_role = replica; SET work_mem = '256MB'")
    await conn.execute(f"SELECT setseed({seed})")
    return conn


async def load(dsn: str, scenario: Scenario, patients: list[Patient]) -> None:
    dim = scenario.dim
    scale = f"1.0 / sqrt({dim})"
    conn = await loader(dsn, (SEED % 1000) / 1000)
    try:
        await conn.execute(
            f"""
            CREATE UNLOGGED TABLE bench_patients (
                idx int PRIMARY KEY, id uuid NOT NULL, thread uuid NOT NULL,
                size int NOT NULL, center vector({dim}));
            CREATE UNLOGGED TABLE bench_topics (t int PRIMARY KEY, v vector({dim}) NOT NULL);
            """
        )
        await conn.copy_records_to_table(
            "bench_patients",
            records=[(p.idx, p.id, p.thread, p.size) for p in patients],
            columns=["idx", "id", "thread", "size"],
        )
        await conn.execute(
            f"""
            UPDATE bench_patients SET center = l2_normalize({noise_sql(dim, scale, "idx")});
            INSERT INTO bench_topics
                SELECT t, l2_normalize({noise_sql(dim, scale, "t")})
                FROM generate_series(1, {TOPICS}) t;
            INSERT INTO patients (id) SELECT id FROM bench_patients;
            INSERT INTO threads (id, patient_id, title)
                SELECT thread, id, 'bench' FROM bench_patients;
            CREATE UNLOGGED TABLE bench_rows AS
                SELECT row_number() OVER (ORDER BY random()) AS ord, gen_random_uuid() AS id,
                       p.idx, p.id AS patient_id, p.thread,
                       1 + floor(random() * {TOPICS})::int AS topic
                FROM bench_patients p, generate_series(1, p.size)
                ORDER BY ord;
            INSERT INTO messages (id, patient_id, thread_id, role, content, source)
                SELECT id, patient_id, thread, 'user', 'bench', 'text'
                FROM bench_rows ORDER BY ord;
            DROP INDEX memories_patient_idx;
            """
        )
    finally:
        await conn.close()

    workers = max(1, os.cpu_count() or 1)

    async def insert(worker: int) -> None:
        c = await loader(dsn, (worker + 1) / (workers + 2))
        try:
            await c.execute(
                f"""
                INSERT INTO memories (message_id, patient_id, embedding)
                SELECT r.id, r.patient_id, l2_normalize(
                    (SELECT v FROM bench_topics WHERE t = r.topic)
                    + (SELECT center FROM bench_patients WHERE idx = r.idx)
                    + {noise_sql(dim, scale, "r.ord")})
                FROM (SELECT * FROM bench_rows WHERE ord % {workers} = {worker}
                      ORDER BY ord OFFSET 0) r
                """
            )
        finally:
            await c.close()

    await asyncio.gather(*(insert(w) for w in range(workers)))
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """
            DROP TABLE bench_rows;
            CREATE INDEX memories_patient_idx ON memories (patient_id);
            """
        )
        await conn.execute("VACUUM ANALYZE patients, threads, messages, memories")
    finally:
        await conn.close()


async def promote(dsn: str, limit: int) -> tuple[float, list[tuple[int, float]], int]:
    """Gives every patient above `limit` a memory graph as the embedding worker does:
    (seconds in all, (size, seconds) per patient, bytes of all graphs)."""
    conn = await connect(dsn)
    timings: list[tuple[int, float]] = []
    try:
        started = time.perf_counter()
        for patient in await memory_graphs.due_for_graphs(conn, limit):
            size = await conn.fetchval(
                "SELECT count(*) FROM memories WHERE patient_id = $1", patient
            )
            began = time.perf_counter()
            await memory_graphs.promote(conn, patient)
            timings.append((size, time.perf_counter() - began))
        elapsed = time.perf_counter() - started
        size_bytes: int = await conn.fetchval(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'memory_graph' AND c.relkind = 'r'"
        )
        return elapsed, timings, size_bytes
    finally:
        await conn.close()


async def prewarm(dsn: str) -> None:
    """Into shared_buffers: what retrieval reads."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """
            CREATE EXTENSION IF NOT EXISTS pg_prewarm;
            SELECT pg_prewarm(c.oid) FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'i') AND (n.nspname = 'memory_graph' OR c.relname IN
                ('memories', 'memories_patient_idx', 'memories_pkey', 'messages',
                 'messages_pkey', 'memory_graphs', 'memory_graphs_pkey'));
            """
        )
    finally:
        await conn.close()


async def make_queries(
    dsn: str, dim: int, kind: str, patients: list[Patient], count: int, rng: random.Random
) -> list[tuple[uuid.UUID, list[float]]]:
    """(patient, query vector) pairs, cycling over the patients."""
    owners = [patients[i % len(patients)] for i in range(count)]
    topics = [rng.randint(1, TOPICS) for _ in range(count)]
    scale = f"1.0 / sqrt({dim})"
    if kind == "own":
        vector = (
            "(SELECT v FROM bench_topics WHERE t = q.topic)"
            " + (SELECT center FROM bench_patients WHERE idx = q.idx)"
            f" + {noise_sql(dim, scale, 'q.n')}"
        )
    else:
        vector = noise_sql(dim, scale, "q.n")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"SELECT setseed({rng.random() * 2 - 1})")
        rows = await conn.fetch(
            f"""
            SELECT l2_normalize({vector})::real[] AS v
            FROM unnest($1::int[], $2::int[]) WITH ORDINALITY AS q (idx, topic, n)
            ORDER BY q.n
            """,
            [p.idx for p in owners],
            topics,
        )
    finally:
        await conn.close()
    return [(p.id, list(r["v"])) for p, r in zip(owners, rows, strict=True)]


async def measure(
    dsn: str,
    cell: Cell,
    queries: Sequence[tuple[uuid.UUID, list[float]]],
    truth: list[set[uuid.UUID]] | None,
) -> list[set[uuid.UUID]]:
    """Runs the queries (the first WARMUP unmeasured) through nearest_memories. Returns
    the ids found for each measured query."""
    conn = await connect(dsn)
    found: list[set[uuid.UUID]] = []
    try:

        async def call(patient: uuid.UUID, vector: list[float]) -> list[memories.Memory]:
            return await memories.nearest_memories(conn, patient, vector, k=K, min_similarity=-2.0)

        for patient, vector in queries[:WARMUP]:
            await call(patient, vector)
        for i, (patient, vector) in enumerate(queries[WARMUP:]):
            started = time.perf_counter()
            result = await call(patient, vector)
            cell.latencies_ms.append((time.perf_counter() - started) * 1000)
            ids = {m.message_id for m in result}
            found.append(ids)
            if len(ids) < K:
                cell.short += 1
            if truth is not None:
                cell.recalls.append(len(ids & truth[i]) / len(truth[i]))
    finally:
        await conn.close()
    return found


HEADER = (
    f"{'memories':>9} {'query':<6} {'strategy':<18} {'n':>4} {'recall@10':>9} "
    f"{'p50 ms':>8} {'p99 ms':>8} {'<10 found':>9}"
)


def row(cell: Cell) -> str:
    recall = "(ref)" if cell.strategy == "exact" else f"{cell.recall:.3f}"
    return (
        f"{cell.size:>9,} {cell.kind:<6} {cell.strategy:<18} {len(cell.latencies_ms):>4} "
        f"{recall:>9} {cell.p50:>8.2f} {cell.p99:>8.2f} "
        f"{cell.short / len(cell.latencies_ms):>9.0%}"
    )


def meets(cell: Cell) -> bool:
    return cell.recall >= TARGET_RECALL and cell.p99 <= TARGET_P99_MS


def recommend(scenario: Scenario, cells: list[Cell], shipped: int) -> list[str]:
    sizes = sorted({c.size for c in cells})
    exact_p99 = {
        s: max(c.p99 for c in cells if c.size == s and c.strategy == "exact") for s in sizes
    }
    fast = [s for s in sizes if exact_p99[s] <= TARGET_P99_MS]
    limit = max(fast) if fast else 0
    lines = [
        f"exact search ({scenario.dim} dims, {scenario.rows:,} memories): p99 ≤ "
        f"{TARGET_P99_MS:g} ms up to {limit:,} memories (the largest measured size; worse of "
        f"the two query kinds); graphs above {shipped:,}"
    ]
    for kind in ("own", "random"):
        gateway = sorted(
            (c for c in cells if c.kind == kind and c.strategy.startswith("gateway")),
            key=lambda c: c.size,
        )
        misses = [
            f"{c.size:,} (recall {c.recall:.3f}, p99 {c.p99:.1f} ms)"
            for c in gateway
            if not meets(c)
        ]
        lines.append(
            f"  gateway (exact ≤ {shipped:,}, the patient's graph above), {kind} queries: "
            + (
                f"recall@10 ≥ {TARGET_RECALL} at p99 ≤ {TARGET_P99_MS:g} ms at every size"
                if not misses
                else "misses the target at " + "; ".join(misses)
            )
        )
    return lines


# Per scenario (by dims), what bench/plot.py draws; saved once every scenario ran.
figures: dict[str, object] = {}


async def run_scenario(server_dsn: str, scenario: Scenario, queries: int, limit: int) -> None:
    name = f"bench_retrieval_{scenario.dim}_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = urlunsplit(urlsplit(server_dsn)._replace(path="/" + name))
    rng = random.Random(SEED + scenario.dim)
    shipped = limit or memories.exact_limit_for(scenario.dim)
    try:
        await prepare_schema(dsn, vector_dim=scenario.dim)
        patients, measured = plan_patients(scenario, rng)
        print(
            f"\n== {scenario.rows:,} memories of {scenario.dim} dims, {len(patients):,} "
            f"patients ({measured} measured, the others 1–{FILLER_MAX} memories each); "
            f"{TOPICS} shared topics",
            flush=True,
        )
        load_average = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"load average at the start {load_average} (1, 5, 15 min)", flush=True)
        started = time.perf_counter()
        await load(dsn, scenario, patients)
        print(f"loaded in {time.perf_counter() - started:.0f} s", flush=True)
        await prewarm(dsn)
        print(HEADER, flush=True)
        cells: list[Cell] = []
        asked: dict[tuple[int, str], list[tuple[uuid.UUID, list[float]]]] = {}
        truths: dict[tuple[int, str], list[set[uuid.UUID]]] = {}
        for size, _count in scenario.groups:
            group = [p for p in patients[:measured] if p.size == size]
            for kind in ("own", "random"):
                qs = await make_queries(dsn, scenario.dim, kind, group, WARMUP + queries, rng)
                cell = Cell(size, kind, "exact")
                asked[size, kind] = qs
                truths[size, kind] = await measure(dsn, cell, qs, None)
                cells.append(cell)
                print(row(cell), flush=True)
        took, timings, graph_bytes = await promote(dsn, shipped)
        await prewarm(dsn)
        per_size = sorted({size for size, _ in timings})
        print(
            f"memory graphs for the {len(timings)} patients above {shipped:,} memories "
            f"(m {memory_graphs.GRAPH_M}, ef_construction "
            f"{memory_graphs.GRAPH_EF_CONSTRUCTION}): {took:.1f} s in all, "
            f"{graph_bytes / 2**20:,.0f} MiB; per patient "
            + ", ".join(
                f"{size:,} memories {statistics.fmean(t for s, t in timings if s == size):.1f} s"
                for size in per_size
            ),
            flush=True,
        )
        for size, _count in scenario.groups:
            for kind in ("own", "random"):
                strategy = (
                    "gateway"
                    if size <= shipped
                    else f"gateway ef={memories.graph_ef_search(size, K)}"
                )
                cell = Cell(size, kind, strategy)
                await measure(dsn, cell, asked[size, kind], truths[size, kind])
                cells.append(cell)
                print(row(cell), flush=True)
                if size > shipped and memories.graph_ef_search(size, K) < PGVECTOR_EF_MAX:
                    # What the capped candidate list leaves: pgvector's largest.
                    cap = memories.GRAPH_EF_MAX
                    memories.GRAPH_EF_MAX = PGVECTOR_EF_MAX
                    try:
                        cell = Cell(size, kind, f"graph ef={memories.graph_ef_search(size, K)}")
                        await measure(dsn, cell, asked[size, kind], truths[size, kind])
                    finally:
                        memories.GRAPH_EF_MAX = cap
                    cells.append(cell)
                    print(row(cell), flush=True)
        for line in recommend(scenario, cells, shipped):
            print(line, flush=True)
        figures[f"{scenario.dim}"] = {
            "rows": scenario.rows,
            "exact_limit": shipped,
            "targets": {"recall": TARGET_RECALL, "p99_ms": TARGET_P99_MS},
            "cells": [
                {
                    "size": c.size,
                    "kind": c.kind,
                    "strategy": c.strategy,
                    "recall": round(c.recall, 4),
                    "p50_ms": round(c.p50, 3),
                    "p99_ms": round(c.p99, 3),
                }
                for c in cells
            ],
        }
        load_average = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(
            f"scenario total {time.perf_counter() - started:.0f} s; load average at the end "
            f"{load_average} (1, 5, 15 min)",
            flush=True,
        )
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def describe(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        version = await conn.fetchval("SHOW server_version")
        settings = {
            s: await conn.fetchval(f"SHOW {s}")
            for s in ("shared_buffers", "work_mem", "effective_cache_size")
        }
        pgvector = await conn.fetchval(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
        )
    finally:
        await conn.close()
    listed = ", ".join(f"{k} {v}" for k, v in settings.items())
    return f"PostgreSQL {version}, pgvector {pgvector}; {listed}"


async def run(dsn: str, names: list[str], queries: int, limit: int) -> None:
    print(
        f"retrieval, {os.cpu_count()} cores ({cpu_model()}), {time.strftime('%Y-%m-%d')}; "
        f"{await describe(dsn)}; k = {K}, {queries} queries per row (+{WARMUP} warm-up); "
        f"targets recall@10 ≥ {TARGET_RECALL}, "
        f"p99 ≤ {TARGET_P99_MS:g} ms",
        flush=True,
    )
    for name in names:
        await run_scenario(dsn, SCENARIOS[name], queries, limit)
    save("retrieval", figures)


async def configure(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for setting, value in (
            ("shared_buffers", SHARED_BUFFERS),
            ("max_wal_size", "16GB"),
            ("checkpoint_timeout", "30min"),
        ):
            await conn.execute(f"ALTER SYSTEM SET {setting} = '{value}'")
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.retrieval", description=__doc__)
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--queries", type=int, default=200, help="measured queries per row")
    parser.add_argument(
        "--rows",
        type=int,
        help="fewer memories for a quick try (keeps the measured sizes that fit in 3/4)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=0,
        help="memories above which a patient gets a graph (RETRIEVAL_EXACT_LIMIT; "
        "default exact_limit_for(dim))",
    )
    args = parser.parse_args()
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    if args.rows:
        for name in names:
            SCENARIOS[name] = shrink(SCENARIOS[name], args.rows)
    external = os.environ.get("BENCH_DATABASE_URL")
    if external:
        asyncio.run(run(external, names, args.queries, args.limit))
        return
    with tempfile.TemporaryDirectory(prefix="painar-bench-") as directory:
        with EmbeddedPostgres(Path(directory)) as dsn:
            asyncio.run(configure(dsn))
        with EmbeddedPostgres(Path(directory)) as dsn:  # restarted with the settings
            asyncio.run(run(dsn, names, args.queries, args.limit))


if __name__ == "__main__":
    main()
