"""Per-patient memory graphs (sql/0009): a patient with more memories than an exact scan
searches in time gets an HNSW index over their own vectors only, in a table of their own.

Promotion is safe against concurrent writers without blocking them:
1. register the graph and create its table, in one transaction: from its commit on, the
   trigger on `memories` makes every write of the patient's memories to the graph too;
2. wait until every transaction running at that commit has ended, since one may have
   written a memory without seeing the registration (as CREATE INDEX CONCURRENTLY waits);
3. copy the patient's memories in, keeping rows the trigger wrote (those are as new or
   newer than what the copy read);
4. build the HNSW index in one go, concurrently (writes go on meanwhile): filling an
   indexed table row by row took several times as long;
5. mark it ready: retrieval searches it from then on (storage/memories.py).
Each step can run again: a promotion that died half-way is finished by the next one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from uuid import UUID

from storage.database import Connection

# HNSW build parameters of a graph (pgvector's defaults; docs/benchmarks.md).
GRAPH_M = 16
GRAPH_EF_CONSTRUCTION = 64
# Room to build a graph in memory: 20,000 memories of 1536 dims need ~160 MB; beyond,
# the build goes on on disk, slower.
GRAPH_BUILD_MEMORY = "256MB"
WRITERS_TIMEOUT_S = 30.0
_PROMOTION_LOCK = 0x6D67  # "mg"


class PromotionDelayed(RuntimeError):
    """A transaction older than the graph's registration is still open; try later."""


def graph_table(patient_id: UUID) -> str:
    """The graph's table, schema-qualified (as sql/0009's memory_graph_table names it)."""
    return f"memory_graph.p_{patient_id.hex}"


async def graph_size(conn: Connection, patient_id: UUID) -> float | None:
    """About how many memories the patient's ready graph holds (the planner's estimate,
    -1 if never analysed); None when the patient has no ready graph."""
    size: float | None = await conn.fetchval(
        """
        SELECT c.reltuples FROM memory_graphs g
        JOIN pg_class c ON c.oid = to_regclass('memory_graph.' || memory_graph_table($1))
        WHERE g.patient_id = $1 AND g.ready_at IS NOT NULL
        """,
        patient_id,
    )
    return size


async def due_for_graphs(
    conn: Connection, limit: int, patient_ids: Sequence[UUID] | None = None
) -> list[UUID]:
    """Patients (of `patient_ids`, or all) with more than `limit` memories and no ready
    graph."""
    if patient_ids is None:
        rows = await conn.fetch(
            """
            SELECT patient_id FROM memories GROUP BY patient_id HAVING count(*) > $1
            EXCEPT SELECT patient_id FROM memory_graphs WHERE ready_at IS NOT NULL
            """,
            limit,
        )
    else:
        rows = await conn.fetch(
            """
            SELECT p AS patient_id FROM unnest($1::uuid[]) AS p
            WHERE NOT EXISTS (SELECT 1 FROM memory_graphs g
                              WHERE g.patient_id = p AND g.ready_at IS NOT NULL)
              AND (SELECT count(*) FROM (SELECT 1 FROM memories m
                                         WHERE m.patient_id = p LIMIT $2 + 1) few) > $2
            """,
            sorted(set(patient_ids)),
            limit,
        )
    return [row["patient_id"] for row in rows]


async def promote(conn: Connection, patient_id: UUID) -> bool:
    """Give the patient a ready graph of all their memories; False if they had one or
    another connection is promoting them right now."""
    # One promoter per patient across processes: a lock in the two-key space, apart from
    # the patient's write lock (storage/changes.py), which writers must not wait on.
    if not await conn.fetchval(
        "SELECT pg_try_advisory_lock($1, hashtext($2::uuid::text))", _PROMOTION_LOCK, patient_id
    ):
        return False
    try:
        if await conn.fetchval(
            "SELECT ready_at IS NOT NULL FROM memory_graphs WHERE patient_id = $1", patient_id
        ):
            return False
        async with conn.transaction():
            await conn.execute("SELECT memory_graph_create($1)", patient_id)
        await _wait_for_older_writers(conn)
        table = graph_table(patient_id)
        await conn.execute(
            f"INSERT INTO {table} (message_id, embedding) "
            "SELECT message_id, embedding FROM memories WHERE patient_id = $1 "
            "ON CONFLICT (message_id) DO NOTHING",
            patient_id,
        )
        await _build_index(conn, patient_id)
        await conn.execute(f"ANALYZE {table}")
        await conn.execute(
            "UPDATE memory_graphs SET ready_at = now() WHERE patient_id = $1 AND ready_at IS NULL",
            patient_id,
        )
        return True
    finally:
        await conn.execute(
            "SELECT pg_advisory_unlock($1, hashtext($2::uuid::text))", _PROMOTION_LOCK, patient_id
        )


async def drop(conn: Connection, patient_id: UUID) -> None:
    await conn.execute("SELECT memory_graph_drop($1)", patient_id)


async def _build_index(conn: Connection, patient_id: UUID) -> None:
    index = f"p_{patient_id.hex}_hnsw"
    # A concurrent build that died leaves an invalid index behind: build it again.
    if await conn.fetchval(
        "SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)",
        f"memory_graph.{index}",
    ):
        await conn.execute(f"DROP INDEX CONCURRENTLY memory_graph.{index}")
    await conn.execute(f"SET maintenance_work_mem = '{GRAPH_BUILD_MEMORY}'")
    try:
        await conn.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {index} ON {graph_table(patient_id)} "
            f"USING hnsw (embedding vector_cosine_ops) "
            f"WITH (m = {GRAPH_M}, ef_construction = {GRAPH_EF_CONSTRUCTION})"
        )
    finally:
        await conn.execute("RESET maintenance_work_mem")


async def _wait_for_older_writers(conn: Connection) -> None:
    snapshot = await conn.fetchval("SELECT pg_current_snapshot()::text")
    deadline = time.monotonic() + WRITERS_TIMEOUT_S
    delay = 0.005
    while await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_snapshot_xip($1::text::pg_snapshot) AS x "
        "WHERE pg_xact_status(x) = 'in progress')",
        snapshot,
    ):
        if time.monotonic() > deadline:
            raise PromotionDelayed("a transaction older than the graph is still open")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)
