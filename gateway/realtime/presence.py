"""Who is connected to a patient's topic, on any gateway process.

Presence is kept apart from pub/sub: a store holds the members (in memory for one
process; a Redis hash per patient for many, with an expiry each process keeps renewing
for its own sessions, so a crashed process's members fade out). A join or leave writes
the store and reads the members back in one round trip, shows them to the process's own
sockets of that patient, and publishes a small `presence.changed` signal on the
patient's topic carrying the process's id. Every other process answers a signal by
reading the store and sending one `presence` frame to its local sockets of that patient.
Either way at most one frame per patient per second, so a crowd joining costs
O(sockets), not O(sockets²).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol
from uuid import UUID

import orjson
from redis.asyncio.cluster import ClusterPipeline
from redis.exceptions import RedisError

from gateway.realtime.broker.commands import cluster_client
from gateway.realtime.broker.link import LinkLost
from gateway.realtime.broker.publisher import CommandFailed, PipelinedCommands
from gateway.realtime.hub import Hub, patient_topic
from gateway.redis_address import is_cluster
from protocol.codec import encode
from protocol.frames import Observer, Presence

log = logging.getLogger(__name__)

SIGNAL = "presence.changed"
MIN_INTERVAL_S = 1.0
MEMBER_TTL_S = 60.0
KEY_TTL_S = int(MEMBER_TTL_S * 2)
# What a store's failure to answer looks like, whichever store it is.
STORE_ERRORS = (RedisError, OSError, LinkLost, CommandFailed)


@dataclass(frozen=True)
class Member:
    session_id: str
    kind: Literal["device", "observer"]
    name: str  # device id, or the observing clinician's id
    since: datetime


class PresenceStore(Protocol):
    async def add(self, patient_id: UUID, member: Member) -> list[Member]:
        """Adds the member; the patient's members, it included."""
        ...

    async def remove(self, patient_id: UUID, session_id: str) -> list[Member]:
        """Removes the member; the patient's members left."""
        ...

    async def members(self, patient_id: UUID) -> list[Member]: ...

    async def renew(self, patient_id: UUID, members: Sequence[Member]) -> None: ...

    async def close(self) -> None: ...


def presence_store_for(redis_url: str | None) -> PresenceStore:
    if not redis_url:
        return MemoryPresenceStore()
    if is_cluster(redis_url):
        return ClusterPresenceStore(redis_url)
    return RedisPresenceStore(redis_url)


class MemoryPresenceStore:
    def __init__(self) -> None:
        self._members: dict[UUID, dict[str, Member]] = {}

    async def add(self, patient_id: UUID, member: Member) -> list[Member]:
        members = self._members.setdefault(patient_id, {})
        members[member.session_id] = member
        return list(members.values())

    async def remove(self, patient_id: UUID, session_id: str) -> list[Member]:
        members = self._members.get(patient_id)
        if members is None:
            return []
        members.pop(session_id, None)
        if not members:
            del self._members[patient_id]
        return list(members.values())

    async def members(self, patient_id: UUID) -> list[Member]:
        return list(self._members.get(patient_id, {}).values())

    async def renew(self, patient_id: UUID, members: Sequence[Member]) -> None:
        return None

    async def close(self) -> None:
        return None


# ---- the Redis hash of a patient's members (both Redis stores) -------------------------


def _key(patient_id: UUID) -> str:
    return f"painar:presence:{patient_id}"


def _entries(members: Iterable[Member]) -> dict[str, bytes]:
    expires = time.time() + MEMBER_TTL_S
    return {
        m.session_id: orjson.dumps(
            {"kind": m.kind, "name": m.name, "since": m.since, "expires": expires}
        )
        for m in members
    }


def _read(fields: Iterable[tuple[Any, Any]]) -> tuple[list[Member], list[Any]]:
    """The live members of a hash's (field, value) pairs, and the fields that expired (a
    crashed process's members)."""
    now = time.time()
    members, expired = [], []
    for field, value in fields:
        entry = orjson.loads(value)
        if entry["expires"] < now:
            expired.append(field)
            continue
        session_id = field.decode() if isinstance(field, bytes) else field
        since = datetime.fromisoformat(entry["since"])
        members.append(Member(session_id, entry["kind"], entry["name"], since))
    return members, expired


class RedisPresenceStore:
    """On one Redis, through one pipelined connection of hiredis-parsed replies: each
    change is one write of its commands and one read of their replies."""

    def __init__(self, url: str) -> None:
        self._redis = PipelinedCommands(url)

    async def add(self, patient_id: UUID, member: Member) -> list[Member]:
        key = _key(patient_id).encode()
        *_, raw = await self._redis.call(
            self._hset(key, [member]), (b"EXPIRE", key, b"%d" % KEY_TTL_S), (b"HGETALL", key)
        )
        return await self._live(key, raw)

    async def remove(self, patient_id: UUID, session_id: str) -> list[Member]:
        key = _key(patient_id).encode()
        _, raw = await self._redis.call((b"HDEL", key, session_id.encode()), (b"HGETALL", key))
        return await self._live(key, raw)

    async def members(self, patient_id: UUID) -> list[Member]:
        key = _key(patient_id).encode()
        (raw,) = await self._redis.call((b"HGETALL", key))
        return await self._live(key, raw)

    async def renew(self, patient_id: UUID, members: Sequence[Member]) -> None:
        if not members:  # the last socket left while a renewal round was under way
            return
        key = _key(patient_id).encode()
        await self._redis.call(self._hset(key, members), (b"EXPIRE", key, b"%d" % KEY_TTL_S))

    async def close(self) -> None:
        await self._redis.close()

    @staticmethod
    def _hset(key: bytes, members: Sequence[Member]) -> tuple[bytes, ...]:
        pairs = [part for f, v in _entries(members).items() for part in (f.encode(), v)]
        return (b"HSET", key, *pairs)

    async def _live(self, key: bytes, raw: list[bytes]) -> list[Member]:
        # HGETALL in RESP2: field, value, field, value, ...
        members, expired = _read(zip(raw[::2], raw[1::2], strict=True))
        if expired:
            await self._redis.call((b"HDEL", key, *expired))
        return members


class ClusterPresenceStore:
    """On a Redis Cluster, through redis-py's cluster client (a patient's hash is one key,
    so one slot; the client follows the slot map and failovers)."""

    def __init__(self, url: str) -> None:
        self._redis = cluster_client(url)

    async def add(self, patient_id: UUID, member: Member) -> list[Member]:
        key = _key(patient_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            self._write(pipe, key, [member])
            pipe.hgetall(key)
            *_, raw = await pipe.execute()
        return await self._live(key, raw)

    async def remove(self, patient_id: UUID, session_id: str) -> list[Member]:
        key = _key(patient_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hdel(key, session_id)
            pipe.hgetall(key)
            _, raw = await pipe.execute()
        return await self._live(key, raw)

    async def members(self, patient_id: UUID) -> list[Member]:
        key = _key(patient_id)
        return await self._live(key, await self._redis.hgetall(key))

    async def renew(self, patient_id: UUID, members: Sequence[Member]) -> None:
        if not members:  # the last socket left while a renewal round was under way
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            self._write(pipe, _key(patient_id), members)
            await pipe.execute()

    async def close(self) -> None:
        await self._redis.aclose()

    @staticmethod
    def _write(pipe: ClusterPipeline, key: str, members: Sequence[Member]) -> None:
        pipe.hset(key, mapping=_entries(members))  # type: ignore[arg-type]
        pipe.expire(key, KEY_TTL_S)

    async def _live(self, key: str, raw: dict[Any, Any]) -> list[Member]:
        members, expired = _read(raw.items())
        if expired:
            await self._redis.hdel(key, *expired)
        return members


class PresenceService:
    def __init__(self, store: PresenceStore, hub: Hub) -> None:
        self.store = store
        self.hub = hub
        self._local: dict[UUID, dict[str, Member]] = {}  # this process's members
        self._pending: dict[UUID, asyncio.Task[None]] = {}
        self._last_sent: dict[UUID, float] = {}
        self._renewer: asyncio.Task[None] | None = None
        hub.on_signal(SIGNAL, self._changed)

    def start(self) -> None:
        self._renewer = asyncio.create_task(self._renew_forever())

    async def close(self) -> None:
        tasks = [t for t in (self._renewer, *self._pending.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.store.close()

    async def joined(self, patient_id: UUID, member: Member) -> int:
        """Records the member; how many devices the patient now has connected (on every
        process), 0 when the store could not say."""
        self._local.setdefault(patient_id, {})[member.session_id] = member
        members = await self._update(patient_id, self.store.add(patient_id, member))
        return sum(1 for m in members or () if m.kind == "device")

    async def left(self, patient_id: UUID, session_id: str) -> None:
        local = self._local.get(patient_id, {})
        local.pop(session_id, None)
        if not local:
            self._local.pop(patient_id, None)
        await self._update(patient_id, self.store.remove(patient_id, session_id))

    async def _update(
        self, patient_id: UUID, write: Awaitable[list[Member]]
    ) -> list[Member] | None:
        """The store's answer to `write` (the members after it), shown to this process's
        sockets, then the signal to the others; None if the store failed."""
        try:
            members = await write
            self._show(patient_id, members)
            await self.hub.signal(patient_topic(patient_id), SIGNAL, self._me)
        except Exception as exc:  # presence is advisory: never fail a session over it
            log.warning("presence update failed: %s", type(exc).__name__)
            return None
        return members

    @property
    def _me(self) -> bytes:
        return self.hub.id.to_bytes(8, "big")

    def _changed(self, topic: str, payload: bytes) -> None:
        if payload == self._me:
            return  # this process's own change: shown when it was made
        patient_id = UUID(topic.removeprefix("patient:"))
        if patient_id not in self._pending:  # else a frame on its way reads the latest
            self._read_and_show(patient_id)

    def _show(self, patient_id: UUID, members: list[Member]) -> None:
        """Send `members` to this process's sockets of the patient, unless a frame went
        out less than MIN_INTERVAL_S ago: then one frame read from the store follows."""
        if patient_id in self._pending:
            return
        if self._last_sent.get(patient_id, 0.0) + MIN_INTERVAL_S > time.monotonic():
            self._read_and_show(patient_id)
            return
        self._deliver(patient_id, members)

    def _read_and_show(self, patient_id: UUID) -> None:
        wait = self._last_sent.get(patient_id, 0.0) + MIN_INTERVAL_S - time.monotonic()
        self._pending[patient_id] = asyncio.create_task(self._send(patient_id, max(0.0, wait)))

    async def _send(self, patient_id: UUID, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
            members = await self.store.members(patient_id)
        except STORE_ERRORS as exc:
            log.warning("presence read failed: %s", type(exc).__name__)
            return
        finally:
            self._pending.pop(patient_id, None)
        self._deliver(patient_id, members)

    def _deliver(self, patient_id: UUID, members: list[Member]) -> None:
        topic = patient_topic(patient_id)
        self._last_sent[patient_id] = time.monotonic()
        if not self.hub.listeners(topic):
            return  # no socket of the patient here (its last one just left)
        frame = Presence(
            patient_id=patient_id,
            devices=sorted({m.name for m in members if m.kind == "device"}),
            observers=[
                Observer(clinician_id=UUID(m.name), since=m.since)
                for m in sorted(members, key=lambda m: m.since)
                if m.kind == "observer"
            ],
        )
        self.hub.deliver_local(topic, frame.type, encode(frame).decode())

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(MEMBER_TTL_S / 3)
            # Throttle marks older than the interval mean nothing: dropping them keeps
            # the map as small as the patients of the last few seconds.
            horizon = time.monotonic() - MIN_INTERVAL_S
            for patient_id, sent in tuple(self._last_sent.items()):
                if sent < horizon:
                    del self._last_sent[patient_id]
            for patient_id, members in tuple(self._local.items()):
                try:
                    await self.store.renew(patient_id, tuple(members.values()))
                except STORE_ERRORS as exc:
                    log.warning("presence renewal failed: %s", type(exc).__name__)


def device_member(session_id: UUID, device_id: str | None) -> Member:
    return Member(str(session_id), "device", device_id or str(session_id), datetime.now(UTC))
