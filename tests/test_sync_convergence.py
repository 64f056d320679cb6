"""Devices of one patient on two gateway processes converge, whatever the timing:
concurrent random mutations, disconnects and reconnects, and a Redis restart."""

from __future__ import annotations

import asyncio
import random
import uuid

import asyncpg

from tests.conftest import RedisServer
from tests.replica import Replica, database_state, random_mutations
from tests.support import TIMEOUT_S, make_settings, serve_gateway
from tests.wsclient import patient_token, recv, send, session, thread_upsert

MUTATIONS_PER_DEVICE = 300


async def test_three_devices_on_two_processes_converge(
    database_url: str, redis_server: RedisServer, second_process: str, db: asyncpg.Connection
) -> None:
    patient = uuid.uuid4()
    async with serve_gateway(make_settings(redis_url=redis_server.url), database_url) as first:
        urls = [first.ws_url, second_process]
        replicas = [Replica(f"d{n}") for n in range(3)]

        async def device(n: int) -> None:
            rng = random.Random(n)
            replica = replicas[n]
            made, serial = 0, 0
            while made < MUTATIONS_PER_DEVICE:
                url = urls[rng.randrange(2)] if n == 2 else urls[n % 2]
                async with session(url, patient_token(patient, replica.name)) as (ws, ready):
                    await replica.handle(ws, ready)
                    # stay for a random number of pushes, then drop the connection
                    for _ in range(rng.randint(5, 40)):
                        if made >= MUTATIONS_PER_DEVICE:
                            break
                        serial += 1
                        batch = random_mutations(rng, replica, replica.name, serial)
                        batch = batch[: MUTATIONS_PER_DEVICE - made]
                        ref = f"{replica.name}-push-{serial}"
                        ack = await replica.push(ws, ref, batch)
                        assert ack["type"] == "sync.ack"
                        made += len(batch)
            # the last word: reconnect and catch up with everything
            async with session(urls[n % 2], patient_token(patient, replica.name)) as (ws, ready):
                await replica.catch_up(ws)

        async with asyncio.timeout(TIMEOUT_S * 12):
            await asyncio.gather(*(device(n) for n in range(3)))
        # every device now pulls once more, after all writers finished
        for n, replica in enumerate(replicas):
            async with session(urls[n % 2], patient_token(patient, replica.name)) as (ws, ready):
                await replica.handle(ws, ready)

    final = max(r.version for r in replicas)
    threads, messages = await database_state(db, patient)
    assert final == await db.fetchval("SELECT sync_version FROM patients WHERE id = $1", patient)
    assert final >= MUTATIONS_PER_DEVICE  # most mutations applied; rejections make no version
    for replica in replicas:
        assert replica.version == final
        assert replica.seen == set(range(1, final + 1))  # every gap was filled
        assert replica.threads == threads
        assert replica.messages == messages


async def test_devices_complete_after_redis_restarts(
    database_url: str, redis_server: RedisServer, second_process: str
) -> None:
    patient = uuid.uuid4()
    async with serve_gateway(make_settings(redis_url=redis_server.url), database_url) as first:
        writer, reader = Replica("writer"), Replica("reader")
        async with (
            session(first.ws_url, patient_token(patient, "writer")) as (w, _),
            session(second_process, patient_token(patient, "reader")) as (r, _),
        ):
            thread = str(uuid.uuid4())

            async def write(n: int) -> None:
                ref = f"p{n}"
                mutation = {
                    "mutation_id": f"m{n}",
                    "entity": "thread",
                    "op": "upsert",
                    "id": thread,
                    "data": {"title": f"title {n}"},
                }
                await send(w, {"type": "sync.push", "id": ref, "mutations": [mutation]})
                assert (await writer.until_ack(w, ref))["applied"] == [f"m{n}"]

            for n in range(10):
                await write(n)
            redis_server.stop()
            for n in range(10, 20):  # stored while nothing can be fanned out
                await write(n)
            redis_server.start()
            await redis_server.wait_ready()

            async def settle(replica: Replica, ws: object) -> None:
                while replica.version < 20:
                    await replica.handle(ws, await recv(ws))  # type: ignore[arg-type]

            async with asyncio.timeout(TIMEOUT_S * 2):
                await asyncio.gather(settle(writer, w), settle(reader, r))
            for replica in (writer, reader):
                assert replica.seen == set(range(1, 21))
                assert replica.threads == {thread: ("title 19", False)}
            assert reader.pulls >= 1  # the missed deltas came through sync.version + pull


async def test_a_push_on_one_process_reaches_a_device_on_the_other(
    database_url: str, redis_server: RedisServer, second_process: str
) -> None:
    patient = uuid.uuid4()
    thread = str(uuid.uuid4())
    async with serve_gateway(make_settings(redis_url=redis_server.url), database_url) as first:
        async with (
            session(first.ws_url, patient_token(patient, "headset")) as (a, _),
            session(second_process, patient_token(patient, "phone")) as (b, _),
        ):
            for n, title in enumerate(["first", "second"], start=1):
                await send(a, thread_upsert(n, thread, title))
                delta = await recv(b, skip=("presence",))
                assert delta["type"] == "sync.delta" and delta["version"] == n
                (change,) = delta["changes"]
                assert (change["version"], change["data"]["title"]) == (n, title)
                assert (change["device_id"], change["mutation_id"]) == ("headset", f"m{n}")
