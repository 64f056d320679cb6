"""Retrieval of a patient's memories: nearest first, never another patient's."""

from __future__ import annotations

import asyncio
import math
import random
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from storage.changes import MessageData, Mutation, ThreadData, apply_mutations
from storage.database import connect, prepare_schema
from storage.erasure import erase_remains
from storage.memories import exact_limit_for, nearest_memories, store_memory
from storage.memory_graphs import due_for_graphs, graph_size, graph_table, promote
from tests.support import TIMEOUT_S, bulk_memories, eventually

DIM = 32


def unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector]


@pytest.fixture
async def small_dsn(blank_database_url: str) -> str:
    """A database with 32-dimensional memories: the guarantees do not depend on size."""
    await prepare_schema(blank_database_url, vector_dim=DIM)
    return blank_database_url


@pytest.fixture
async def small_db(small_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(small_dsn)
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
    # (fixture data, written in bulk rather than through the change log), and half of
    # those patients have memory graphs of their own.
    await bulk_memories(small_db, 200, 100, DIM, "CASE WHEN i = 1 THEN 5.0 ELSE random() * 0.1 END")
    others = await small_db.fetch("SELECT id FROM patients WHERE id <> $1 LIMIT 100", patient)
    for other in others:
        assert await promote(small_db, other["id"])
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


async def exact_nearest(
    db: asyncpg.Connection, patient: uuid.UUID, query: list[float], k: int
) -> list[uuid.UUID]:
    rows = await db.fetch(
        "SELECT m.message_id FROM memories m JOIN messages ms ON ms.id = m.message_id "
        "WHERE m.patient_id = $1 AND NOT ms.deleted ORDER BY m.embedding <=> $2 LIMIT $3",
        patient,
        query,
        k,
    )
    return [r["message_id"] for r in rows]


async def graph_rows(db: asyncpg.Connection, patient: uuid.UUID) -> dict[uuid.UUID, str]:
    rows = await db.fetch(f"SELECT message_id, embedding::text AS v FROM {graph_table(patient)}")
    return {r["message_id"]: r["v"] for r in rows}


async def memory_rows(db: asyncpg.Connection, patient: uuid.UUID) -> dict[uuid.UUID, str]:
    rows = await db.fetch(
        "SELECT message_id, embedding::text AS v FROM memories WHERE patient_id = $1", patient
    )
    return {r["message_id"]: r["v"] for r in rows}


async def test_a_patient_with_a_graph_finds_the_same_memories_and_every_call_searches_it(
    small_db: asyncpg.Connection,
) -> None:
    # After five calls on a connection PostgreSQL may switch to a generic plan that reads
    # the table and sorts; the graph's search must stay on its index.
    rng = random.Random(11)
    patients = [uuid.uuid4() for _ in range(3)]
    for patient in patients:
        ids = await add_messages(small_db, patient, [f"m{n}" for n in range(60)])
        for n, message_id in enumerate(ids):
            vector = unit([rng.gauss(0, 1) for _ in range(DIM)])
            await store_memory(small_db, patient, message_id, vector, f"m{n}")
    patient = patients[0]
    assert sorted(await due_for_graphs(small_db, 59)) == sorted(patients)
    assert await due_for_graphs(small_db, 60) == []
    assert await graph_size(small_db, patient) is None
    assert await promote(small_db, patient)
    assert not await promote(small_db, patient)  # it has one
    assert sorted(await due_for_graphs(small_db, 59)) == sorted(patients[1:])
    assert await due_for_graphs(small_db, 59, [patient, patients[1]]) == [patients[1]]
    assert await graph_size(small_db, patient) == 60
    assert await graph_rows(small_db, patient) == await memory_rows(small_db, patient)

    async def index_scans() -> int:
        await small_db.execute("SELECT pg_stat_force_next_flush()")
        await small_db.execute("SELECT pg_stat_clear_snapshot()")
        scans = await small_db.fetchval(
            "SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = $1",
            f"p_{patient.hex}_hnsw",
        )
        return int(scans or 0)

    before = await index_scans()
    for _ in range(8):
        query = unit([rng.gauss(0, 1) for _ in range(DIM)])
        found = await nearest_memories(small_db, patient, query, k=5, min_similarity=-1.0)
        assert [m.message_id for m in found] == await exact_nearest(small_db, patient, query, 5)
        similarities = [m.similarity for m in found]
        assert similarities == sorted(similarities, reverse=True)
    assert await index_scans() - before >= 8


async def test_a_graph_follows_new_edited_and_deleted_memories_and_goes_with_erasure(
    small_db: asyncpg.Connection,
) -> None:
    patient = uuid.uuid4()
    first, second = await add_messages(small_db, patient, ["first", "second"])
    north = unit([1.0] + [0.0] * (DIM - 1))
    south = unit([-1.0] + [0.0] * (DIM - 1))
    await store_memory(small_db, patient, first, north, "first")
    assert await promote(small_db, patient)
    await store_memory(small_db, patient, second, north, "second")  # a new memory
    assert set(await graph_rows(small_db, patient)) == {first, second}
    # An edit re-embeds: the graph holds the new vector.
    thread = await small_db.fetchval("SELECT thread_id FROM messages WHERE id = $1", first)
    edit = MessageData(thread, "user", "first, edited")
    await apply_mutations(small_db, patient, [Mutation("message", "upsert", first, edit)])
    await store_memory(small_db, patient, first, south, "first, edited")
    assert await graph_rows(small_db, patient) == await memory_rows(small_db, patient)
    found = await nearest_memories(small_db, patient, south, k=1, min_similarity=-1.0)
    assert [m.content for m in found] == ["first, edited"]
    # A delete takes the memory out of the graph in the same transaction.
    await apply_mutations(small_db, patient, [Mutation("message", "delete", second)])
    assert set(await graph_rows(small_db, patient)) == {first}
    found = await nearest_memories(small_db, patient, north, k=5, min_similarity=-1.0)
    assert [m.content for m in found] == ["first, edited"]
    await erase_remains(small_db, patient)
    assert await graph_size(small_db, patient) is None
    assert await small_db.fetchval("SELECT to_regclass($1)", graph_table(patient)) is None


async def test_a_promotion_waits_for_a_writer_that_began_before_it(
    small_db: asyncpg.Connection, small_dsn: str
) -> None:
    """A memory written by a transaction that started before the graph was registered
    (so its trigger did not write to the graph) and commits after is not lost."""
    patient = uuid.uuid4()
    early, late = await add_messages(small_db, patient, ["early", "late"])
    await store_memory(small_db, patient, early, unit([1.0] * DIM), "early")
    writer = await connect(small_dsn)
    promoter = await connect(small_dsn)
    try:
        tx = writer.transaction()
        await tx.start()
        await store_memory(writer, patient, late, unit([0.5] * DIM), "late")
        promotion = asyncio.create_task(promote(promoter, patient))

        async def registered() -> bool:
            return bool(
                await small_db.fetchval(
                    "SELECT count(*) FROM memory_graphs WHERE patient_id = $1", patient
                )
            )

        await eventually(registered, what="the graph registered")
        assert not promotion.done()  # waiting for the writer
        await tx.commit()
        assert await asyncio.wait_for(promotion, TIMEOUT_S)
    finally:
        await writer.close()
        await promoter.close()
    assert set(await graph_rows(small_db, patient)) == {early, late}


async def test_two_processes_promoting_one_patient_at_once_build_one_graph(
    small_db: asyncpg.Connection, small_dsn: str
) -> None:
    patient = uuid.uuid4()
    ids = await add_messages(small_db, patient, [f"m{n}" for n in range(20)])
    for n, message_id in enumerate(ids):
        await store_memory(
            small_db, patient, message_id, unit([1.0 + n] + [1.0] * (DIM - 1)), f"m{n}"
        )
    first, second = await connect(small_dsn), await connect(small_dsn)
    try:
        results = await asyncio.gather(promote(first, patient), promote(second, patient))
    finally:
        await first.close()
        await second.close()
    assert sorted(results) == [False, True]
    assert await graph_size(small_db, patient) == 20


def test_the_exact_limit_follows_the_vector_size() -> None:
    assert exact_limit_for(384) == exact_limit_for(1536) == 2000
    assert exact_limit_for(2000) == 1536  # larger rows, proportionally fewer
