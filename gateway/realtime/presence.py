"""Who is connected to a patient's topic, on any gateway process.

Presence is kept apart from pub/sub: a store holds the members (in memory for one
process; a Redis hash per patient for many, with an expiry each process keeps renewing
for its own sessions, so a crashed process's members fade out). A join or leave writes
the store and publishes a small `presence.changed` signal on the patient's topic. Each
process answers a signal by reading the store and sending one `presence` frame to its
local sockets of that patient — at most one per patient per second, so a crowd joining
costs O(sockets), not O(sockets²).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TypeVar
from uuid import UUID

import orjson
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.exceptions import RedisError

from gateway.realtime.broker.commands import command_client
from gateway.realtime.hub import Hub, patient_topic
from protocol.codec import encode
from protocol.frames import Observer, Presence

log = logging.getLogger(__name__)
T = TypeVar("T")

SIGNAL = "presence.changed"
MIN_INTERVAL_S = 1.0
MEMBER_TTL_S = 60.0


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

    async def remove(self, patient_id: UUID, session_id: str) -> None: ...

    async def members(self, patient_id: UUID) -> list[Member]: ...

    async def renew(self, patient_id: UUID, members: Sequence[Member]) -> None: ...

    async def close(self) -> None: ...


class MemoryPresenceStore:
    def __init__(self) -> None:
        self._members: dict[UUID, dict[str, Member]] = {}

    async def add(self, patient_id: UUID, member: Member) -> list[Member]:
        members = self._members.setdefault(patient_id, {})
        members[member.session_id] = member
        return list(members.values())

    async def remove(self, patient_id: UUID, session_id: str) -> None:
        members = self._members.get(patient_id)
        if members is not None:
            members.pop(session_id, None)
            if not members:
                del self._members[patient_id]

    async def members(self, patient_id: UUID) -> list[Member]:
        return list(self._members.get(patient_id, {}).values())

    async def renew(self, patient_id: UUID, members: Sequence[Member]) -> None:
        return None

    async def close(self) -> None:
        return None


class RedisPresenceStore:
    def __init__(self, url: str) -> None:
        self._redis = command_client(url)

    @staticmethod
    def _key(patient_id: UUID) -> str:
        return f"painar:presence:{patient_id}"

    async def add(self, patient_id: UUID, member: Member) -> list[Member]:
        key = self._key(patient_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            self._write(pipe, key, [member])
            pipe.hgetall(key)
            *_, raw = await pipe.execute()
        return await self._live(key, raw)

    async def remove(self, patient_id: UUID, session_id: str) -> None:
        await self._redis.hdel(self._key(patient_id), session_id)

    async def members(self, patient_id: UUID) -> list[Member]:
        key = self._key(patient_id)
        return await self._live(key, await self._redis.hgetall(key))

    async def _live(self, key: str, raw: dict[Any, Any]) -> list[Member]:
        """The members of a hash's entries; expired ones (a crashed process's) deleted."""
        now = time.time()
        members, expired = [], []
        for field, value in raw.items():
            entry = orjson.loads(value)
            if entry["expires"] < now:
                expired.append(field)
                continue
            since = datetime.fromisoformat(entry["since"])
            session_id = field.decode() if isinstance(field, bytes) else field
            members.append(Member(session_id, entry["kind"], entry["name"], since))
        if expired:
            await self._redis.hdel(key, *expired)
        return members

    async def renew(self, patient_id: UUID, members: Sequence[Member]) -> None:
        if not members:  # the last socket left while a renewal round was under way
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            self._write(pipe, self._key(patient_id), members)
            await pipe.execute()

    @staticmethod
    def _write(pipe: Pipeline | ClusterPipeline, key: str, members: Sequence[Member]) -> None:
        expires = time.time() + MEMBER_TTL_S
        mapping = {
            m.session_id: orjson.dumps(
                {"kind": m.kind, "name": m.name, "since": m.since, "expires": expires}
            )
            for m in members
        }
        pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
        pipe.expire(key, int(MEMBER_TTL_S * 2))

    async def close(self) -> None:
        await self._redis.aclose()


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

    async def _update(self, patient_id: UUID, write: Awaitable[T]) -> T | None:
        """The store's answer to `write`, then the signal; None if either failed."""
        try:
            written = await write
            await self.hub.signal(patient_topic(patient_id), SIGNAL)
        except Exception as exc:  # presence is advisory: never fail a session over it
            log.warning("presence update failed: %s", type(exc).__name__)
            return None
        return written

    def _changed(self, topic: str, payload: bytes) -> None:
        patient_id = UUID(topic.removeprefix("patient:"))
        if patient_id in self._pending:
            return  # a frame is already on its way and will read the latest members
        wait = self._last_sent.get(patient_id, 0.0) + MIN_INTERVAL_S - time.monotonic()
        self._pending[patient_id] = asyncio.create_task(self._send(patient_id, max(0.0, wait)))

    async def _send(self, patient_id: UUID, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
            members = await self.store.members(patient_id)
        except (RedisError, OSError) as exc:
            log.warning("presence read failed: %s", type(exc).__name__)
            return
        finally:
            self._pending.pop(patient_id, None)
        self._last_sent[patient_id] = time.monotonic()
        frame = Presence(
            patient_id=patient_id,
            devices=sorted({m.name for m in members if m.kind == "device"}),
            observers=[
                Observer(clinician_id=UUID(m.name), since=m.since)
                for m in sorted(members, key=lambda m: m.since)
                if m.kind == "observer"
            ],
        )
        self.hub.deliver_local(patient_topic(patient_id), frame.type, encode(frame).decode())

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
                except (RedisError, OSError) as exc:
                    log.warning("presence renewal failed: %s", type(exc).__name__)


def device_member(session_id: UUID, device_id: str | None) -> Member:
    return Member(str(session_id), "device", device_id or str(session_id), datetime.now(UTC))
