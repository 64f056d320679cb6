"""Retrieval of a patient's memories: nearest first, never another patient's."""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from storage.changes import MessageData, Mutation, ThreadData, apply_mutations
from storage.database import connect, prepare_schema
from storage.memories import exact_limit_for, nearest_memories, store_memory
from tests.conftest import _fresh_database  # noqa: PLC2701
from tests.support import bulk_memories

DIM = 32


def unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector]


@pytest.fixture
async def small_db(postgres_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A database with 32-dimensional memories: the guarantees do not depend on size."""
    async for dsn in _fresh_database(postgres_dsn, "template1"):
        await prepare_schema(dsn, vector_dim=DIM)
        conn = await connect(dsn)
        try:
            yield conn
        finally:
            await conn.close()


async def add_messages(
    db: asyncpg.Connection, patient: uuid.UUID, texts: list[str]
) -> list[uuid.UUID]:
    thread = Mutation("thread", "upsert", uuid.uuid4(), ThreadData("t"))
    messages = [
        Mutation("message", "upsert", uuid.uuid4(), MessageData(thread.id, "user", text))
        for text in texts
    ]
    await apply_mutations(db, patient, [thread, *messages])
    return [m.id for m in messages]


async def test_a_patient_with_few_memories_among_many_nearer_ones_gets_only_their_own(
    small_db: asyncpg.Connection,
) -> None:
    rng = random.Random(7)
    query = unit([1.0] + [0.0] * (DIM - 1))
    patient = uuid.uuid4()
    own = await add_messages(small_db, patient, [f"own {n}" for n in range(10)])
    for n, message_id in enumerate(own):  # far from the query
        vector = unit([-1.0] + [rng.random() for _ in range(DIM - 1)])
        await store_memory(small_db, patient, message_id, vector, f"own {n}")
    # 20,000 memories of 200 other patients, all nearer to the query than any of `own`
    # (fixture data, written in bulk rather than through the change log; the HNSW index is
    # built once afterwards, as fast as 20,000 inserts into it are slow).
    await small_db.execute("DROP INDEX memories_embedding_idx")
    await bulk_memories(small_db, 200, 100, DIM, "CASE WHEN i = 1 THEN 5.0 ELSE random() * 0.1 END")
    await small_db.execute(
        "CREATE INDEX memories_embedding_idx ON memories USING hnsw (embedding vector_cosine_ops)"
    )
    await small_db.execute("ANALYZE memories")
    assert await small_db.fetchval("SELECT count(*) FROM memories") == 20_010
    found = await nearest_memories(small_db, patient, query, k=10, min_similarity=-1.0)
    assert sorted(m.message_id for m in found) == sorted(own)
    similarities = [m.similarity for m in found]
    assert similarities == sorted(similarities, reverse=True)


async def test_nearest_first_with_min_similarity_and_exclusions(
    small_db: asyncpg.Connection,
) -> None:
    patient = uuid.uuid4()
    near, middle, far = await add_messages(small_db, patient, ["near", "middle", "far"])
    query = unit([1.0, 0.0] + [0.0] * (DIM - 2))
    await store_memory(small_db, patient, near, unit([1.0, 0.1] + [0.0] * (DIM - 2)), "near")
    await store_memory(small_db, patient, middle, unit([1.0, 1.0] + [0.0] * (DIM - 2)), "middle")
    await store_memory(small_db, patient, far, unit([-1.0, 0.0] + [0.0] * (DIM - 2)), "far")
    found = await nearest_memories(small_db, patient, query, k=6)
    assert [m.content for m in found] == ["near", "middle"]  # "far" is below 0 similarity
    found = await nearest_memories(small_db, patient, query, k=1, exclude=[near])
    assert [m.content for m in found] == ["middle"]
    await apply_mutations(small_db, patient, [Mutation("message", "delete", near)])
    found = await nearest_memories(small_db, patient, query, k=6)
    assert [m.content for m in found] == ["middle"]  # deleted messages are forgotten


async def test_past_the_exact_limit_every_call_searches_the_hnsw_index(
    small_db: asyncpg.Connection,
) -> None:
    # After five calls on a connection PostgreSQL may switch to a generic plan that reads
    # the btree and sorts; the approximate path must stay on the vector index.
    rng = random.Random(11)
    patients = [uuid.uuid4() for _ in range(40)]
    for patient in patients:
        ids = await add_messages(small_db, patient, [f"m{n}" for n in range(50)])
        for n, message_id in enumerate(ids):
            vector = unit([rng.gauss(0, 1) for _ in range(DIM)])
            await store_memory(small_db, patient, message_id, vector, f"m{n}")
    await small_db.execute("ANALYZE memories")

    async def index_scans() -> int:
        await small_db.execute("SELECT pg_stat_force_next_flush()")
        await small_db.execute("SELECT pg_stat_clear_snapshot()")
        scans = await small_db.fetchval(
            "SELECT idx_scan FROM pg_stat_user_indexes "
            "WHERE indexrelname = 'memories_embedding_idx'"
        )
        return int(scans or 0)

    before = await index_scans()
    for _ in range(8):
        query = unit([rng.gauss(0, 1) for _ in range(DIM)])
        found = await nearest_memories(small_db, patients[0], query, k=5, exact_limit=10)
        similarities = [m.similarity for m in found]
        assert similarities == sorted(similarities, reverse=True)
    assert await index_scans() - before >= 8


def test_the_exact_limit_follows_the_vector_size() -> None:
    assert exact_limit_for(384) == exact_limit_for(1536) == 2000
    assert exact_limit_for(2000) == 1536  # larger rows, proportionally fewer
