"""Where presence is kept: a patient's members (devices and observers, each one socket),
in memory for one process, or a Redis hash per patient for many, each entry with an
expiry the process renews for its own sockets, so a crashed process's members fade out.
Each write reads the members back in the same round trip."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol
from uuid import UUID

import orjson
from redis.asyncio.cluster import ClusterPipeline
from redis.exceptions import RedisError

from gateway.realtime.broker.commands import cluster_client
from gateway.realtime.broker.link import LinkLost
from gateway.realtime.broker.publisher import CommandFailed, PipelinedCommands
from gateway.redis_address import is_cluster

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
        self._redis.close()

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
