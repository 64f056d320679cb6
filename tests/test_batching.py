"""Lookups made together (gateway/ops/batching.py), and session.ready's reads made that
way: a crowd connecting at once, each socket told its own patient's version."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from gateway.ops.batching import Batched
from storage.changes import Mutation, ThreadData, apply_mutations
from tests.support import Gateway
from tests.wsclient import patient_token, session


class Squares:
    """A fetch that answers k -> k*k and remembers the batches it was asked."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.fail_next = False

    async def fetch(self, keys: list[int]) -> dict[int, int]:
        self.batches.append(keys)
        await asyncio.sleep(0)  # on its way for a moment, as a query is
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("down")
        return {k: k * k for k in keys}


async def test_callers_arriving_together_share_one_fetch_each_with_its_answer() -> None:
    squares = Squares()
    batched = Batched(squares.fetch)
    answers = await asyncio.gather(*(batched.get(k % 40) for k in range(100)))
    assert answers == [(k % 40) ** 2 for k in range(100)]
    assert len(squares.batches) == 1 and sorted(squares.batches[0]) == list(range(40))


async def test_callers_while_a_fetch_is_on_its_way_make_the_next_batch() -> None:
    squares = Squares()
    batched = Batched(squares.fetch, max_batch=10)
    first = asyncio.create_task(batched.get(1))
    await asyncio.sleep(0)  # the first fetch is under way
    later = [asyncio.create_task(batched.get(k)) for k in range(2, 27)]
    assert [await t for t in (first, *later)] == [k * k for k in range(1, 27)]
    assert [len(b) for b in squares.batches] == [1, 10, 10, 5]


async def test_a_failed_fetch_fails_its_batch_only() -> None:
    squares = Squares()
    batched = Batched(squares.fetch)
    squares.fail_next = True
    failed = await asyncio.gather(batched.get(2), batched.get(3), return_exceptions=True)
    assert all(isinstance(f, ConnectionError) for f in failed)
    assert await batched.get(4) == 16


@pytest.mark.parametrize("gateway", [{"max_sockets_per_patient": 20}], indirect=True)
async def test_a_crowd_connecting_at_once_gets_each_patients_own_sync_version(
    gateway: Gateway, db: asyncpg.Connection
) -> None:
    patients = [uuid.uuid4() for _ in range(3)]
    for writes, patient in enumerate(patients):  # versions 0, 1 and 2
        for _ in range(writes):
            thread = Mutation("thread", "upsert", uuid.uuid4(), ThreadData("t"))
            await apply_mutations(db, patient, [thread])

    async def ready_version(patient: uuid.UUID, device: str) -> int:
        async with session(gateway.ws_url, patient_token(patient, device)) as (_, ready):
            return int(ready["sync_version"])

    crowd = [(p, f"d{n}") for n in range(15) for p in patients]
    versions = await asyncio.gather(*(ready_version(p, d) for p, d in crowd))
    assert versions == [patients.index(p) for p, _ in crowd]
