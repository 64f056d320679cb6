"""The change log: gapless per-patient versions, idempotency, rejections, catch-up."""

from __future__ import annotations

import asyncio
import uuid
from uuid import UUID

import asyncpg

from protocol.codes import ErrorCode
from storage.changes import (
    Applied,
    Duplicate,
    MessageData,
    Mutation,
    Rejected,
    ThreadData,
    apply_mutations,
    changes_since,
    current_version,
)
from storage.database import Database, connect, create_pool


def new_thread(title: str = "Back pain", mutation_id: str | None = None) -> Mutation:
    return Mutation("thread", "upsert", uuid.uuid4(), ThreadData(title), mutation_id)


def new_message(thread_id: UUID, content: str = "It hurts", **kw: object) -> Mutation:
    data = MessageData(thread_id=thread_id, role="user", content=content)
    return Mutation("message", "upsert", uuid.uuid4(), data, **kw)  # type: ignore[arg-type]


async def snapshot(db: asyncpg.Connection) -> tuple[list[asyncpg.Record], ...]:
    """Everything a write could have touched."""
    tables = ("patients", "threads", "messages", "memories", "changes")
    return tuple([await db.fetch(f"SELECT * FROM {table} ORDER BY 1, 2") for table in tables])


async def test_concurrent_writers_get_versions_one_to_n_without_gaps(database_url: str) -> None:
    patient = uuid.uuid4()
    writers, per_writer = 8, 200

    async def writer(n: int) -> list[int]:
        conn = await connect(database_url)
        versions = []
        try:
            for i in range(per_writer):
                m = new_thread(f"t{n}-{i}", mutation_id=f"m{i}")
                result = await apply_mutations(conn, patient, [m], device_id=f"device-{n}")
                versions.append(result.version)
        finally:
            await conn.close()
        return versions

    per_writer_versions = await asyncio.gather(*(writer(n) for n in range(writers)))
    total = writers * per_writer
    assert sorted(v for vs in per_writer_versions for v in vs) == list(range(1, total + 1))
    for versions in per_writer_versions:  # each writer saw its own writes in order
        assert versions == sorted(versions)
    conn = await connect(database_url)
    try:
        logged = await conn.fetch(
            "SELECT version FROM changes WHERE patient_id = $1 ORDER BY version", patient
        )
        assert [r["version"] for r in logged] == list(range(1, total + 1))
        assert await current_version(conn, patient) == total
    finally:
        await conn.close()


async def test_versions_are_per_patient(db: asyncpg.Connection) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    await apply_mutations(db, a, [new_thread(), new_thread()])
    result = await apply_mutations(db, b, [new_thread()])
    assert result.version == 1
    assert await current_version(db, a) == 2
    assert await current_version(db, uuid.uuid4()) == 0


async def test_a_replayed_mutation_is_recognised_and_not_applied_twice(
    db: asyncpg.Connection,
) -> None:
    patient = uuid.uuid4()
    thread = new_thread("first title", mutation_id="m-1")
    first = await apply_mutations(db, patient, [thread], device_id="headset")
    before = await snapshot(db)

    again = await apply_mutations(db, patient, [thread], device_id="headset")
    assert again.results == [Duplicate(version=1, same=True)]
    # The same key for another change: still not applied, and reported as not the same.
    reused = Mutation("thread", "upsert", thread.id, ThreadData("changed title"), "m-1")
    other = await apply_mutations(db, patient, [reused], device_id="headset")
    assert other.results == [Duplicate(version=1, same=False)]
    assert again.version == other.version == first.version == 1
    assert await snapshot(db) == before


async def test_a_key_repeated_within_one_batch_applies_once(db: asyncpg.Connection) -> None:
    patient = uuid.uuid4()
    thread = new_thread(mutation_id="same")
    result = await apply_mutations(db, patient, [thread, thread], device_id="phone")
    assert isinstance(result.results[0], Applied)
    assert result.results[1] == Duplicate(version=1)
    assert result.version == 1


async def test_the_idempotency_key_includes_the_device(db: asyncpg.Connection) -> None:
    patient = uuid.uuid4()
    await apply_mutations(db, patient, [new_thread(mutation_id="m")], device_id="phone")
    result = await apply_mutations(db, patient, [new_thread(mutation_id="m")], device_id="tablet")
    assert isinstance(result.results[0], Applied)
    assert result.version == 2


async def test_applied_changes_carry_the_entity_state(db: asyncpg.Connection) -> None:
    patient = uuid.uuid4()
    thread = new_thread("Knee")
    message = new_message(thread.id, "Sharp pain when climbing stairs", mutation_id="x")
    result = await apply_mutations(db, patient, [thread, message], device_id="headset")
    thread_change, message_change = result.changes
    assert (thread_change.version, thread_change.entity, thread_change.op) == (
        1,
        "thread",
        "upsert",
    )
    assert thread_change.data is not None and thread_change.data["title"] == "Knee"
    assert message_change.data is not None
    assert message_change.data["content"] == "Sharp pain when climbing stairs"
    assert message_change.data["thread_id"] == str(thread.id)
    assert message_change.data["device_id"] == "headset"
    assert (message_change.device_id, message_change.mutation_id) == ("headset", "x")
    stored, _ = await changes_since(db, patient, 0, 10, 1 << 20)
    assert stored == result.changes


async def test_rejected_mutations_store_nothing_and_the_rest_apply(
    db: asyncpg.Connection,
) -> None:
    patient, other = uuid.uuid4(), uuid.uuid4()
    theirs = new_thread("theirs")
    await apply_mutations(db, other, [theirs])
    mine = new_thread("mine")
    doomed = new_thread("doomed")
    reply = Mutation(
        "message", "upsert", uuid.uuid4(), MessageData(mine.id, "assistant", "A reply")
    )
    await apply_mutations(db, patient, [mine, doomed, reply])
    await apply_mutations(db, patient, [Mutation("thread", "delete", doomed.id)])
    before = await snapshot(db)

    cases: list[tuple[Mutation, ErrorCode, str]] = [
        (new_message(uuid.uuid4()), ErrorCode.NOT_FOUND, "thread_id: no such thread"),
        (new_message(theirs.id), ErrorCode.FORBIDDEN, "another patient"),
        (new_thread_with_id(theirs.id), ErrorCode.FORBIDDEN, "another patient"),
        (new_thread_with_id(doomed.id), ErrorCode.CONFLICT, "deleted"),
        (new_message(doomed.id), ErrorCode.CONFLICT, "deleted"),
        (Mutation("thread", "delete", uuid.uuid4()), ErrorCode.NOT_FOUND, "no such thread"),
        (Mutation("thread", "delete", theirs.id), ErrorCode.FORBIDDEN, "another patient"),
        (Mutation("message", "delete", uuid.uuid4()), ErrorCode.NOT_FOUND, "no such message"),
        (
            Mutation("message", "upsert", reply.id, MessageData(mine.id, "user", "edited")),
            ErrorCode.CONFLICT,
            "role",
        ),
        (Mutation("thread", "upsert", uuid.uuid4(), None), ErrorCode.INVALID, "data"),
    ]
    for mutation, code, text in cases:
        result = await apply_mutations(db, patient, [mutation], device_id="headset")
        (outcome,) = result.results
        assert isinstance(outcome, Rejected), mutation
        assert outcome.code == code and text in outcome.message, (mutation, outcome)
        assert result.version == 4
    after = await snapshot(db)
    devices = await db.fetch("SELECT device_id FROM devices")
    assert [r["device_id"] for r in devices] == ["headset"]  # only the device was seen
    assert after == before

    mixed = await apply_mutations(db, patient, [cases[0][0], new_thread("fine")])
    assert isinstance(mixed.results[0], Rejected) and isinstance(mixed.results[1], Applied)
    assert mixed.version == 5


def new_thread_with_id(thread_id: UUID) -> Mutation:
    return Mutation("thread", "upsert", thread_id, ThreadData("taken over"))


async def test_deleting_a_thread_deletes_its_messages_and_their_memories(
    db: asyncpg.Connection,
) -> None:
    patient = uuid.uuid4()
    thread = new_thread()
    message = new_message(thread.id)
    await apply_mutations(db, patient, [thread, message])
    await db.execute(
        "INSERT INTO memories (message_id, patient_id, embedding) VALUES ($1, $2, $3)",
        message.id,
        patient,
        [1.0] * 1536,
    )
    result = await apply_mutations(db, patient, [Mutation("thread", "delete", thread.id)])
    (change,) = result.changes
    assert (change.op, change.data) == ("delete", None)
    assert await db.fetchval("SELECT deleted FROM messages WHERE id = $1", message.id)
    assert await db.fetchval("SELECT count(*) FROM memories") == 0


async def test_a_page_is_bounded_by_bytes_and_never_empty(db: asyncpg.Connection) -> None:
    patient = uuid.uuid4()
    await apply_mutations(db, patient, [new_thread("x" * 10_000) for _ in range(5)])
    page, more = await changes_since(db, patient, 0, 500, 25_000)
    assert [c.version for c in page] == [1, 2] and more
    page, more = await changes_since(db, patient, 2, 500, 25_000)
    assert [c.version for c in page] == [3, 4] and more
    page, more = await changes_since(db, patient, 4, 500, 25_000)
    assert [c.version for c in page] == [5] and not more
    page, more = await changes_since(db, patient, 0, 500, 100)  # one change over the bound
    assert [c.version for c in page] == [1] and more


async def test_changes_since_pages_with_has_more_over_the_key_index(
    db: asyncpg.Connection,
) -> None:
    patient = uuid.uuid4()
    await apply_mutations(db, patient, [new_thread(str(i)) for i in range(5)])
    await apply_mutations(db, uuid.uuid4(), [new_thread()])
    page, more = await changes_since(db, patient, 0, 2, 1 << 20)
    assert [c.version for c in page] == [1, 2] and more
    page, more = await changes_since(db, patient, 2, 3, 1 << 20)
    assert [c.version for c in page] == [3, 4, 5] and not more
    page, more = await changes_since(db, patient, 5, 3, 1 << 20)
    assert page == [] and not more
    plan = await db.fetch(
        "EXPLAIN (FORMAT TEXT) SELECT * FROM changes WHERE patient_id = $1 AND version > $2 "
        "ORDER BY version LIMIT $3",
        patient,
        0,
        3,
    )
    assert "Index Scan using changes_pkey" in "\n".join(r[0] for r in plan)


async def test_a_held_write_keeps_the_patients_writers_waiting_until_release(
    database_url: str,
) -> None:
    """hold_until_release: the next writer of the patient proceeds only once the first
    connection is back in the pool (whose reset drops the advisory lock)."""
    patient = uuid.uuid4()
    pool = await create_pool(database_url, min_size=2, max_size=2)
    try:
        first = await pool.acquire()
        await apply_mutations(first, patient, [new_thread("a")], hold_until_release=True)

        async def second_writer() -> int:
            async with pool.acquire() as conn:
                result = await apply_mutations(
                    conn, patient, [new_thread("b")], hold_until_release=True
                )
                return result.version

        waiting = asyncio.create_task(second_writer())
        done, _ = await asyncio.wait({waiting}, timeout=0.3)
        assert not done  # blocked behind the first writer's lock, though it committed
        await pool.release(first)
        async with asyncio.timeout(10):
            assert await waiting == 2
    finally:
        await pool.close()


async def test_the_pool_lets_go_of_a_left_lock_except_after_a_read_only_block(
    database_url: str,
) -> None:
    """The change log's patient lock is released by the pool's reset; a block that only
    reads skips that round trip (session.ready's read does)."""
    pool = Database(database_url, min_size=1, max_size=1)
    await pool.open()

    async def locks_held() -> int:
        async with pool.acquire(read_only=True) as conn:
            held: int = await conn.fetchval(
                "SELECT count(*) FROM pg_locks"
                " WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            )
            return held

    try:
        async with pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock(4242)")
        assert await locks_held() == 0
        async with pool.acquire(read_only=True) as conn:
            await conn.execute("SELECT pg_advisory_lock(4242)")  # breaking the promise, to see it
        assert await locks_held() == 1
        async with pool.acquire():
            pass
        assert await locks_held() == 0
    finally:
        await pool.close()
