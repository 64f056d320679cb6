"""Per-patient (filtered) nearest-neighbour retrieval: exact search against HNSW with
iterative scan, by patient size, and the strategy the gateway ships (exact up to
`storage.memories.exact_limit_for(dim)` memories, HNSW above), checked against the
targets recall@10 ≥ TARGET_RECALL at p99 ≤ TARGET_P99_MS.

Two scenarios, each in its own database with our schema (sql/, VECTOR_DIM set to the
scenario's size): (a) 100,000 memories of 1536 dims, (b) 1,000,000 memories of 384 dims.
In each, a few patients of every measured size (10, 100, 700, 1,000, 2,000, 5,000,
20,000 and, in (b), 50,000 memories: 700 and 2,000 are the shipped limits, so each limit
has a measured size at it and one above) and the other rows spread over many patients of
1–199 memories. The rows are loaded with the HNSW index dropped, in random order (a
patient's rows are scattered over the table as they would be after months of use),
generated in SQL; then `memories_embedding_idx` is built again as the migration builds
it, and timed.

Data: a memory is l2_normalize(topic + patient + noise), three random Gaussian vectors of
norm ≈ 1 each, one of TOPICS topics shared by all patients: a patient's memories on one
topic have cosine ≈ 2/3, on others ≈ 1/3, and every other patient's memories on the
query's topic ≈ 1/3 too. Two kinds of query: "own", a new memory of the patient drawn
the same way (what the chat's retrieval sends), and "random", a random unit vector (near
nothing of the patient's: the worst case for a filtered graph search).

Strategies, each through `storage.memories.nearest_memories` with k = 10 on a fresh
connection after 10 unmeasured queries: "exact" (exact_limit above the patient's size);
"hnsw ef=100" (exact_limit = 0: the approximate path as shipped, which keeps the planner
on the HNSW index with enable_sort off for its transaction; its count of the patient's
rows stops at one row); "gateway" (exact_limit = exact_limit_for(dim), what the gateway
runs by default: the same exact search up to the limit, and above it the HNSW path after
counting up to exact_limit + 1 of the patient's rows). Above the limit, where hnsw ef=100
misses the recall target, "hnsw ef=200" is measured as well (hnsw.ef_search is
max(HNSW_EF_SEARCH, k); the row raises HNSW_EF_SEARCH). Recall@10 is against the exact
results for the same queries; latency is one call (count, search and, for HNSW, setting
the scan options). An HNSW row (and "gateway" above the limit) stops after `--budget`
seconds once it has 20 queries. "<10 found" is the share of queries that returned fewer
than 10 memories; "hnsw idx" the share in which the server scanned
memories_embedding_idx (from pg_stat_user_indexes).

Runs against an embedded PostgreSQL in a temporary directory, restarted once with
shared_buffers = SHARED_BUFFERS (or BENCH_DATABASE_URL, a server with pgvector where this
may create databases; its settings are used as they are). Takes about 7 minutes for
(a) and 13 for (b) on 2 cores; run it niced when sharing the machine:

    nice -n 19 .venv/bin/python -m bench.retrieval [--scenario 1536|384|all] [--queries N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
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
from storage import memories
from storage.database import connect, prepare_schema
from storage.embedded import EmbeddedPostgres

K = 10
TOPICS = 100
FILLER_MAX = 199  # the other patients have 1..FILLER_MAX memories each
EF_DEFAULT = memories.HNSW_EF_SEARCH  # restored after each HNSW row
EF_HIGHER = 200  # measured above the limit where EF_DEFAULT misses the recall target
WARMUP = 10
TARGET_RECALL = 0.95
TARGET_P99_MS = 15.0
SHARED_BUFFERS = "6GB"
MAINTENANCE_WORK_MEM = "4GB"
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
    hnsw_share: float = 0.0

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
            DROP INDEX memories_embedding_idx;
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


async def build_index(dsn: str) -> tuple[float, int, list[str]]:
    """(seconds, bytes, server notices) of building the HNSW index as sql/0001 does."""
    notices: list[str] = []
    conn = await asyncpg.connect(dsn)
    conn.add_log_listener(lambda _c, message: notices.append(str(message)))
    try:
        workers = max(0, (os.cpu_count() or 1) - 1)
        await conn.execute(
            f"SET maintenance_work_mem = '{MAINTENANCE_WORK_MEM}'; "
            f"SET max_parallel_maintenance_workers = {workers}"
        )
        started = time.perf_counter()
        await conn.execute(
            "CREATE INDEX memories_embedding_idx ON memories "
            "USING hnsw (embedding vector_cosine_ops)"
        )
        elapsed = time.perf_counter() - started
        size: int = await conn.fetchval("SELECT pg_relation_size('memories_embedding_idx')")
        # Into shared_buffers: the heap (and its TOAST, where 1536-dim vectors live) and
        # the indexes that retrieval reads.
        await conn.execute(
            """
            CREATE EXTENSION IF NOT EXISTS pg_prewarm;
            SELECT pg_prewarm(c.oid) FROM pg_class c
            WHERE c.relname IN ('memories', 'memories_embedding_idx', 'memories_patient_idx',
                                'memories_pkey', 'messages', 'messages_pkey')
            UNION ALL
            SELECT pg_prewarm(c.reltoastrelid) FROM pg_class c
            WHERE c.relname = 'memories' AND c.reltoastrelid <> 0
            UNION ALL
            SELECT pg_prewarm(i.indexrelid) FROM pg_index i
            JOIN pg_class c ON i.indrelid = c.reltoastrelid WHERE c.relname = 'memories';
            """
        )
        return elapsed, size, notices
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


async def hnsw_scans(conn: asyncpg.Connection) -> int:
    # The session's counters reach the shared statistics when it goes idle; force that.
    await conn.execute("SELECT pg_stat_force_next_flush()")
    scans: int = await conn.fetchval(
        "SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = 'memories_embedding_idx'"
    )
    return scans


async def measure(
    dsn: str,
    cell: Cell,
    queries: Sequence[tuple[uuid.UUID, list[float]]],
    exact_limit: int,
    truth: list[set[uuid.UUID]] | None,
    budget: float,
    ef_search: int = EF_DEFAULT,
) -> list[set[uuid.UUID]]:
    """Runs the queries (the first WARMUP unmeasured) through nearest_memories with
    `exact_limit` (exact search up to it, HNSW with `ef_search` above). Returns the ids
    found for each measured query."""
    exact = cell.size <= exact_limit
    memories.HNSW_EF_SEARCH = ef_search
    conn = await connect(dsn)
    found: list[set[uuid.UUID]] = []
    try:

        async def call(patient: uuid.UUID, vector: list[float]) -> list[memories.Memory]:
            return await memories.nearest_memories(
                conn, patient, vector, k=K, min_similarity=-2.0, exact_limit=exact_limit
            )

        for patient, vector in queries[:WARMUP]:
            await call(patient, vector)
        before = await hnsw_scans(conn)
        deadline = time.perf_counter() + budget
        for i, (patient, vector) in enumerate(queries[WARMUP:]):
            if not exact and i >= 20 and time.perf_counter() > deadline:
                break
            started = time.perf_counter()
            result = await call(patient, vector)
            cell.latencies_ms.append((time.perf_counter() - started) * 1000)
            ids = {m.message_id for m in result}
            found.append(ids)
            if len(ids) < K:
                cell.short += 1
            if truth is not None:
                cell.recalls.append(len(ids & truth[i]) / len(truth[i]))
        cell.hnsw_share = (await hnsw_scans(conn) - before) / len(found)
    finally:
        await conn.close()
        memories.HNSW_EF_SEARCH = EF_DEFAULT
    return found


HEADER = (
    f"{'memories':>9} {'query':<6} {'strategy':<18} {'n':>4} {'recall@10':>9} "
    f"{'p50 ms':>8} {'p99 ms':>8} {'<10 found':>9} {'hnsw idx':>8}"
)


def row(cell: Cell) -> str:
    recall = "(ref)" if cell.strategy == "exact" else f"{cell.recall:.3f}"
    return (
        f"{cell.size:>9,} {cell.kind:<6} {cell.strategy:<18} {len(cell.latencies_ms):>4} "
        f"{recall:>9} {cell.p50:>8.2f} {cell.p99:>8.2f} "
        f"{cell.short / len(cell.latencies_ms):>9.0%} {cell.hnsw_share:>8.0%}"
    )


def meets(cell: Cell) -> bool:
    return cell.recall >= TARGET_RECALL and cell.p99 <= TARGET_P99_MS


def recommend(scenario: Scenario, cells: list[Cell]) -> list[str]:
    shipped = memories.exact_limit_for(scenario.dim)
    sizes = sorted({c.size for c in cells})
    exact_p99 = {
        s: max(c.p99 for c in cells if c.size == s and c.strategy == "exact") for s in sizes
    }
    fast = [s for s in sizes if exact_p99[s] <= TARGET_P99_MS]
    limit = max(fast) if fast else 0
    first = (
        f"exact search ({scenario.dim} dims, {scenario.rows:,} memories): p99 ≤ "
        f"{TARGET_P99_MS:g} ms up to {limit:,} memories (the largest measured size; worse of "
        "the two query kinds)"
    )
    above = [s for s in sizes if s > limit]
    if above and limit:
        nxt = above[0]
        p1, p2 = exact_p99[limit], exact_p99[nxt]
        if p2 > p1:
            crossing = limit + (TARGET_P99_MS - p1) * (nxt - limit) / (p2 - p1)
            first += f", ≈ {crossing:,.0f} by linear interpolation to {nxt:,}"
    lines = [first]
    at_or_below = [s for s in sizes if s <= shipped]
    if at_or_below:
        s = max(at_or_below)
        verdict = "within" if exact_p99[s] <= TARGET_P99_MS else "OVER"
        lines.append(
            f"  shipped exact_limit_for({scenario.dim}) = {shipped:,}: exact p99 at "
            f"{s:,} memories {exact_p99[s]:.1f} ms, {verdict} the target"
            + ("" if shipped in sizes else f" (no size measured at {shipped:,})")
        )
    for kind in ("own", "random"):
        gateway = sorted(
            (c for c in cells if c.kind == kind and c.strategy == "gateway"),
            key=lambda c: c.size,
        )
        misses = [
            f"{c.size:,} (recall {c.recall:.3f}, p99 {c.p99:.1f} ms)"
            for c in gateway
            if not meets(c)
        ]
        lines.append(
            f"  gateway (exact ≤ {shipped:,}, HNSW ef={EF_DEFAULT} above), {kind} queries: "
            + (
                f"recall@10 ≥ {TARGET_RECALL} at p99 ≤ {TARGET_P99_MS:g} ms at every size"
                if not misses
                else "misses the target at " + "; ".join(misses)
            )
        )
    return lines


async def run_scenario(server_dsn: str, scenario: Scenario, queries: int, budget: float) -> None:
    name = f"bench_retrieval_{scenario.dim}_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = urlunsplit(urlsplit(server_dsn)._replace(path="/" + name))
    rng = random.Random(SEED + scenario.dim)
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
        loaded = time.perf_counter() - started
        build, index_bytes, notices = await build_index(dsn)
        print(
            f"load (without the HNSW index) {loaded:.0f} s; HNSW index build "
            f"(m 16, ef_construction 64, maintenance_work_mem {MAINTENANCE_WORK_MEM}, "
            f"{max(0, (os.cpu_count() or 1) - 1)} parallel worker(s) + leader): "
            f"{build:.1f} s, {index_bytes / 2**20:,.0f} MiB",
            flush=True,
        )
        for notice in notices:
            print(f"  server: {notice}")
        shipped = memories.exact_limit_for(scenario.dim)
        print(
            f"gateway = nearest_memories with exact_limit = exact_limit_for({scenario.dim}) "
            f"= {shipped:,}",
            flush=True,
        )
        print(HEADER, flush=True)
        cells: list[Cell] = []
        for size, _count in scenario.groups:
            group = [p for p in patients[:measured] if p.size == size]
            for kind in ("own", "random"):
                qs = await make_queries(dsn, scenario.dim, kind, group, WARMUP + queries, rng)
                cell = Cell(size, kind, "exact")
                truth = await measure(dsn, cell, qs, size, None, budget)
                cells.append(cell)
                print(row(cell), flush=True)
                cell = Cell(size, kind, f"hnsw ef={EF_DEFAULT}")
                await measure(dsn, cell, qs, 0, truth, budget)
                cells.append(cell)
                print(row(cell), flush=True)
                if size > shipped and cell.recall < TARGET_RECALL:
                    cell = Cell(size, kind, f"hnsw ef={EF_HIGHER}")
                    await measure(dsn, cell, qs, 0, truth, budget, ef_search=EF_HIGHER)
                    cells.append(cell)
                    print(row(cell), flush=True)
                cell = Cell(size, kind, "gateway")
                await measure(dsn, cell, qs, shipped, truth, budget)
                cells.append(cell)
                print(row(cell), flush=True)
        for line in recommend(scenario, cells):
            print(line, flush=True)
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


def cpu_model() -> str:
    text = Path("/proc/cpuinfo").read_text()
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match[1] if match else "unknown CPU"


async def run(dsn: str, names: list[str], queries: int, budget: float) -> None:
    print(
        f"retrieval, {os.cpu_count()} cores ({cpu_model()}), {time.strftime('%Y-%m-%d')}; "
        f"{await describe(dsn)}; k = {K}, {queries} queries per row (+{WARMUP} warm-up, "
        f"HNSW rows stop after {budget:g} s); targets recall@10 ≥ {TARGET_RECALL}, "
        f"p99 ≤ {TARGET_P99_MS:g} ms",
        flush=True,
    )
    for name in names:
        await run_scenario(dsn, SCENARIOS[name], queries, budget)


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
        "--budget", type=float, default=15.0, help="seconds after which an HNSW row stops"
    )
    args = parser.parse_args()
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    if args.rows:
        for name in names:
            SCENARIOS[name] = shrink(SCENARIOS[name], args.rows)
    external = os.environ.get("BENCH_DATABASE_URL")
    if external:
        asyncio.run(run(external, names, args.queries, args.budget))
        return
    with tempfile.TemporaryDirectory(prefix="painar-bench-") as directory:
        with EmbeddedPostgres(Path(directory)) as dsn:
            asyncio.run(configure(dsn))
        with EmbeddedPostgres(Path(directory)) as dsn:  # restarted with the settings
            asyncio.run(run(dsn, names, args.queries, args.budget))


if __name__ == "__main__":
    main()
