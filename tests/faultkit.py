"""The fault suite's harness (issue 15): two gateway processes, Redis, PostgreSQL and a
stand-in model, all real and all of its own; patients whose devices push and chat at a
steady rate while faults are injected one after another; and the checks at the end.

Used by tests/test_faults.py (the short form, in the suite) and bench/faults.py (the full
run, `just faults`). Faults, each really done:

- `kill`: gateway B gets SIGKILL and is started again on the same port;
- `redis`: Redis is stopped and started again (it keeps nothing: pub/sub and presence);
- `postgres`: PostgreSQL is stopped (fast shutdown) and started again;
- `partition`: the TCP proxy between gateway B and Redis drops every connection and
  refuses new ones for the hold time (a partition that resets; one that silently drops
  packets is not made here);
- `slow`: one device of every patient stops reading its socket for the hold time.

A device pushes 1–3 random mutations (tests/replica.py) every `push_interval_s`, keeps a
replica fed only by deltas and pulls, and on any failure reconnects (to the other
process, then back) and resends what was not acknowledged, with the same ids. Chat
patients' headsets send a message every `chat_interval_s` with a `client_message_id`
and resend it until its reply is complete, as docs/protocol.md tells clients to.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from websockets.exceptions import ConnectionClosed, InvalidStatus

from storage.database import prepare_schema
from storage.embedded import EmbeddedPostgres
from tests.conftest import RedisServer
from tests.fake_openai import Behaviour, fake_openai_app
from tests.replica import Replica, database_state, random_mutations
from tests.support import (
    TEST_SECRET,
    TIMEOUT_S,
    free_port,
    gateway_env,
    serve_app,
    wait_ready,
    with_database,
)
from tests.wsclient import patient_token, recv, send, session

FAULTS = ("kill", "redis", "postgres", "partition", "slow")
RECONNECT_DELAY_S = 0.2


@dataclass(frozen=True)
class Load:
    sync_patients: int = 4
    chat_patients: int = 1
    push_interval_s: float = 1.0
    chat_interval_s: float = 3.0
    hold_s: float = 2.0  # how long a fault lasts (a stop, a partition, a stall)
    calm_s: float = 3.0  # load without faults before the first and between faults


class TcpProxy:
    """Loopback TCP to Redis's unix socket, which can be cut (a partition) and healed."""

    def __init__(self, upstream: Path) -> None:
        self.upstream = upstream
        self.port = 0
        self.cut = False
        self._pipes: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.partition()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def partition(self) -> None:
        self.cut = True
        for writer in list(self._pipes):
            writer.transport.abort()

    def heal(self) -> None:
        self.cut = False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(str(self.upstream))
        except OSError:
            writer.transport.abort()
            return
        self._pipes |= {writer, up_writer}
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._pipes -= {writer, up_writer}
            writer.transport.abort()
            up_writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()


class GatewayProcess:
    """`python -m gateway serve` on a fixed port, killable and startable again."""

    def __init__(self, name: str, env: dict[str, str], log: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/v1/ws"
        self.env = gateway_env(PORT=str(self.port), HOST="127.0.0.1", **env)
        self.log = log
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--no-migrate",
                env=self.env,
                stdout=log,
                stderr=log,
            )
        await wait_ready(self.port, TIMEOUT_S * 3, f"gateway {self.name}")

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            async with asyncio.timeout(TIMEOUT_S * 2):
                await self.process.wait()


@dataclass
class Stats:
    acked: dict[str, set[str]] = field(default_factory=dict)  # device -> mutation ids
    chats: dict[str, str] = field(default_factory=dict)  # client_message_id -> device
    chats_done: set[str] = field(default_factory=set)
    errors: Counter[str] = field(default_factory=Counter)  # error codes and failures seen
    last_ack: dict[str, float] = field(default_factory=dict)  # device -> monotonic time
    replicas: dict[str, tuple[uuid.UUID, Replica]] = field(default_factory=dict)
    stalled: set[str] = field(default_factory=set)  # devices told to stop reading
    phase: str = "calm"  # the fault being injected or recovered from, for `errors`

    def error(self, what: str) -> None:
        self.errors[f"{self.phase}: {what}"] += 1

    def refusals(self) -> int:
        """Retryable errors the sync devices were answered (and resent after)."""
        return sum(replica.refusals for _, replica in self.replicas.values())


@dataclass
class Cluster:
    dsn: str
    redis: RedisServer
    proxy: TcpProxy
    postgres: EmbeddedPostgres
    a: GatewayProcess
    b: GatewayProcess

    @property
    def urls(self) -> list[str]:
        return [self.a.url, self.b.url]


@asynccontextmanager
async def cluster(directory: Path) -> AsyncIterator[Cluster]:
    async with AsyncExitStack() as stack:
        postgres = EmbeddedPostgres(directory / "pg")
        server = postgres.start()
        stack.callback(postgres.stop)
        admin = await asyncpg.connect(server)
        await admin.execute('CREATE DATABASE "faults"')
        await admin.close()
        dsn = with_database(server, "faults")
        await prepare_schema(dsn, vector_dim=1536)
        redis = RedisServer(Path(os.path.realpath(directory)) / "r")
        redis.socket.parent.mkdir()
        redis.start()
        stack.callback(redis.stop)
        await redis.wait_ready()
        proxy = TcpProxy(redis.socket)
        await proxy.start()
        stack.push_async_callback(proxy.close)
        behaviour = Behaviour(tokens=["Thank", " you", " for", " telling", " me", "."])
        behaviour.token_delay_s = 0.05
        _, model_url = await stack.enter_async_context(serve_app(fake_openai_app(behaviour)))
        env = {
            "DATABASE_URL": dsn,
            "SECRET_KEY": TEST_SECRET,
            "OPENAI_BASE_URL": f"{model_url}/v1",
            "OPENAI_API_KEY": "faults",
            "REPLY_LEASE_S": "5",
            "LOG_LEVEL": "WARNING",
        }
        a = GatewayProcess("A", {**env, "REDIS_URL": redis.url}, directory / "a.log")
        b = GatewayProcess(
            "B", {**env, "REDIS_URL": f"redis://127.0.0.1:{proxy.port}"}, directory / "b.log"
        )
        for process in (a, b):
            await process.start()
            stack.push_async_callback(process.stop)
        yield Cluster(dsn, redis, proxy, postgres, a, b)


async def sync_device(
    cluster: Cluster, patient: uuid.UUID, n: int, load: Load, stats: Stats, stop: asyncio.Event
) -> None:
    name = f"p{patient.hex[:8]}-d{n}"
    rng = random.Random(f"{patient}-{n}")
    replica = Replica(name)
    stats.replicas[name] = (patient, replica)
    acked = stats.acked.setdefault(name, set())
    serial, pending, attempt = 0, None, n
    while not stop.is_set():
        url = cluster.urls[attempt % 2]
        try:
            async with session(url, patient_token(patient, name)) as (ws, ready):
                await replica.handle(ws, ready)
                while not stop.is_set():
                    while name in stats.stalled:  # reads and writes nothing meanwhile
                        await asyncio.sleep(0.05)
                    if pending is None:
                        serial += 1
                        mutations = random_mutations(rng, replica, name, serial)
                        pending = (f"{name}-{serial}", mutations)
                    ack = await replica.push(ws, *pending)
                    acked.update(ack["applied"], ack["duplicates"])
                    stats.last_ack[name] = time.monotonic()
                    pending = None
                    await read_for(ws, replica, load.push_interval_s)
        except (ConnectionClosed, InvalidStatus, OSError, TimeoutError, AssertionError) as exc:
            stats.error(f"sync device {failure(exc)}")
            attempt += 1
            await asyncio.sleep(RECONNECT_DELAY_S)


async def read_for(ws: Any, replica: Replica, seconds: float) -> None:
    """Handle what arrives for `seconds`."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            frame = await recv(ws, timeout=left)
        except TimeoutError:
            return
        await replica.handle(ws, frame)


async def chat_device(
    cluster: Cluster, patient: uuid.UUID, load: Load, stats: Stats, stop: asyncio.Event
) -> None:
    name = f"c{patient.hex[:8]}"
    serial, attempt, current = 0, 0, None
    while not stop.is_set():
        try:
            async with session(cluster.urls[attempt % 2], patient_token(patient, name)) as (ws, _):
                while not stop.is_set():
                    if current is None:
                        serial += 1
                        current = f"{name}-{serial}"
                        stats.chats[current] = name
                    if await chat_once(ws, current, stats):
                        stats.chats_done.add(current)
                        stats.last_ack[name] = time.monotonic()
                        current = None
                        await asyncio.sleep(load.chat_interval_s)
                    else:
                        await asyncio.sleep(RECONNECT_DELAY_S)
        except (ConnectionClosed, InvalidStatus, OSError, TimeoutError, AssertionError) as exc:
            stats.error(f"chat device {failure(exc)}")
            attempt += 1
            await asyncio.sleep(RECONNECT_DELAY_S)


async def chat_once(ws: Any, client_message_id: str, stats: Stats) -> bool:
    """Send (or resend) a message; True once its reply is complete."""
    ref = f"s-{client_message_id}-{time.monotonic_ns()}"
    frame = {
        "type": "chat.send",
        "id": ref,
        "thread_id": str(uuid.uuid5(uuid.NAMESPACE_URL, client_message_id)),
        "text": f"How should I rest my knee? ({client_message_id})",
        "client_message_id": client_message_id,
    }
    await send(ws, frame)
    response_id = None
    while True:
        answer = await recv(ws)
        if answer.get("ref") == ref and answer["type"] == "ack":
            response_id = answer.get("response_id")
            if response_id is None:
                return True  # its reply was complete already
        elif answer["type"] == "error" and answer["error"].get("ref") == ref:
            stats.error(f"chat device {answer['error']['code']}")
            return False
        elif answer["type"] == "chat.done" and answer["response_id"] == response_id:
            return bool(answer["finish_reason"] == "stop")
        elif answer["type"] == "sync.version" and response_id is not None:
            # Frames were missed (the broker was away): the reply's end may be among
            # them. A resend tells: `ack` alone if it is complete, else it is asked again.
            stats.error("chat device resent after sync.version")
            return False


def failure(exc: BaseException) -> str:
    if isinstance(exc, ConnectionClosed):
        return f"close {exc.rcvd.code if exc.rcvd else 'abnormal'}"
    if isinstance(exc, InvalidStatus):
        return f"http {exc.response.status_code}"
    return type(exc).__name__


async def inject(cluster: Cluster, fault: str, load: Load, stats: Stats) -> None:
    """Make the fault happen and end it (`hold_s` later where it lasts)."""
    if fault == "kill":
        await cluster.b.kill()
        await cluster.b.start()
    elif fault == "redis":
        cluster.redis.stop()
        await asyncio.sleep(load.hold_s)
        cluster.redis.start()
        await cluster.redis.wait_ready()
    elif fault == "postgres":
        cluster.postgres.stop()
        await asyncio.sleep(load.hold_s)
        cluster.postgres.start()
    elif fault == "partition":
        cluster.proxy.partition()
        await asyncio.sleep(load.hold_s)
        cluster.proxy.heal()
    elif fault == "slow":
        stalled = {name for name in stats.replicas if name.endswith("-d2")}
        stats.stalled |= stalled
        await asyncio.sleep(load.hold_s)
        stats.stalled -= stalled
    else:
        raise ValueError(fault)


async def recovered_after(ended: float, stats: Stats, timeout: float) -> float:
    """Seconds from a fault's end until every device has had a write acknowledged."""
    devices = list(stats.last_ack)
    async with asyncio.timeout(timeout):
        while any(stats.last_ack[d] <= ended for d in devices):
            await asyncio.sleep(0.05)
    return max(stats.last_ack[d] for d in devices) - ended


@dataclass
class Outcome:
    recovery_s: dict[str, float]
    acknowledged: int
    lost: list[str]
    diverged: list[str]
    chats: int
    replies_missing: list[str]
    replies_doubled: list[str]
    errors: Counter[str]
    duration_s: float


async def run(
    directory: Path,
    load: Load,
    faults: tuple[str, ...] = FAULTS,
    observe: Callable[[Cluster], Coroutine[Any, Any, None]] | None = None,
) -> Outcome:
    """The load, each of `faults` in turn with calm around it; `observe` runs alongside
    from the start until the load stops."""
    started = time.monotonic()
    async with cluster(directory) as c:
        observer = asyncio.create_task(observe(c)) if observe is not None else None
        stats, stop = Stats(), asyncio.Event()
        tasks = [
            asyncio.create_task(sync_device(c, patient, n, load, stats, stop))
            for patient in (uuid.uuid4() for _ in range(load.sync_patients))
            for n in range(3)
        ]
        tasks += [
            asyncio.create_task(chat_device(c, uuid.uuid4(), load, stats, stop))
            for _ in range(load.chat_patients)
        ]
        recovery: dict[str, float] = {}
        try:
            await asyncio.sleep(load.calm_s)
            for fault in faults:
                refused = stats.refusals()
                stats.phase = fault
                await inject(c, fault, load, stats)
                recovery[fault] = await recovered_after(time.monotonic(), stats, 60)
                if stats.refusals() > refused:
                    stats.errors[f"{fault}: sync device retryable error"] += (
                        stats.refusals() - refused
                    )
                stats.phase = "calm"
                await asyncio.sleep(load.calm_s)
        finally:
            if observer is not None:
                observer.cancel()
            stop.set()
            done = await asyncio.wait(tasks, timeout=TIMEOUT_S * 3)
            for task in done[1]:
                task.cancel()
            for task in done[0]:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        return await check(c, stats, recovery, time.monotonic() - started)


async def check(c: Cluster, stats: Stats, recovery: dict[str, float], duration: float) -> Outcome:
    db = await asyncpg.connect(c.dsn)
    try:
        lost: list[str] = []
        for device, ids in stats.acked.items():
            stored = {
                r["mutation_id"]
                for r in await db.fetch(
                    "SELECT mutation_id FROM changes WHERE device_id = $1 "
                    "AND mutation_id = ANY($2::text[])",
                    device,
                    sorted(ids),
                )
            }
            lost += sorted(ids - stored)
        diverged = [
            name
            for name, (patient, replica) in stats.replicas.items()
            if not await converged(c, db, patient, replica)
        ]
        replies = {
            r["mutation_id"][len("chat:") :]: r["replies"]
            for r in await db.fetch(
                """
                SELECT ch.mutation_id, (SELECT count(*) FROM messages r
                                        WHERE r.reply_to = ch.entity_id
                                          AND r.finish_reason = 'stop') AS replies
                FROM changes ch WHERE ch.mutation_id LIKE 'chat:%' AND ch.entity = 'message'
                """
            )
        }
        done = sorted(stats.chats_done)
        return Outcome(
            recovery_s=recovery,
            acknowledged=sum(len(ids) for ids in stats.acked.values()),
            lost=lost,
            diverged=diverged,
            chats=len(done),
            replies_missing=[m for m in done if replies.get(m, 0) == 0],
            replies_doubled=[m for m, count in replies.items() if count > 1],
            errors=stats.errors,
            duration_s=duration,
        )
    finally:
        await db.close()


async def converged(
    c: Cluster, db: asyncpg.Connection, patient: uuid.UUID, replica: Replica
) -> bool:
    """Catch the replica up on a fresh socket; then it must equal the database."""
    async with session(c.a.url, patient_token(patient, replica.name + "-check")) as (ws, ready):
        await replica.handle(ws, ready)
        await replica.catch_up(ws)
    threads, messages = await database_state(db, patient)
    return replica.threads == threads and replica.messages == messages
