"""A device's local replica for the sync suites: fed only by `sync.delta` and
`sync.changes`, it fills every version gap by pulling, and resends a push the gateway
refused with a retryable error (too fast, busy, its database unavailable) after backing
off, the way a client should. A deleted entity keeps
no content (deletes erase it on the server too)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from websockets.asyncio.client import ClientConnection

from tests.wsclient import recv, send

BACKOFF_S = 0.5  # after a retryable error
ERASED_THREAD = ("", True)  # (title, deleted)
ERASED_MESSAGE = ("", "", True)  # (thread, content, deleted)


@dataclass
class Replica:
    name: str
    version: int = 0  # last version applied, gapless
    seen: set[int] = field(default_factory=set)
    threads: dict[str, tuple[str, bool]] = field(default_factory=dict)  # id -> (title, deleted)
    messages: dict[str, tuple[str, str, bool]] = field(default_factory=dict)  # thread, content
    acks: dict[str, dict[str, Any]] = field(default_factory=dict)
    pulls: int = 0
    refusals: int = 0  # retryable errors received (`rate_limited`, `busy`, `unavailable`)
    _pull_serial: int = 0

    def apply(self, change: dict[str, Any]) -> None:
        version = change["version"]
        assert version == self.version + 1, (self.name, version, self.version)
        self.version = version
        self.seen.add(version)
        entity_id, data = change["id"], change["data"]
        if change["entity"] == "thread":
            if change["op"] == "upsert":
                self.threads[entity_id] = (data["title"], False)
            else:
                self.threads[entity_id] = ERASED_THREAD
                for mid, (tid, _, _) in list(self.messages.items()):
                    if tid == entity_id:  # a thread's delete takes its messages
                        self.messages[mid] = ERASED_MESSAGE
        elif change["op"] == "upsert":
            self.messages[entity_id] = (data["thread_id"], data["content"], False)
        else:
            self.messages[entity_id] = ERASED_MESSAGE

    async def handle(self, ws: ClientConnection, frame: dict[str, Any]) -> None:
        """Apply what a frame carries; pull when it shows a gap."""
        kind = frame["type"]
        if kind == "sync.delta":
            first = frame["changes"][0]["version"]
            if frame["version"] <= self.version:
                return  # already have it (pulled meanwhile)
            if first != self.version + 1:
                await self.catch_up(ws)
                return
            for change in frame["changes"]:
                self.apply(change)
        elif kind in ("sync.version", "session.ready"):
            latest = frame.get("version", frame.get("sync_version")) or 0
            if latest > self.version:
                await self.catch_up(ws)
        elif kind == "sync.ack":
            self.acks[frame["ref"]] = frame
        elif kind == "error" and frame["error"].get("retryable"):
            self.refusals += 1  # rate_limited, busy, unavailable: back off, send again

    async def catch_up(self, ws: ClientConnection) -> None:
        """Pull until nothing more follows, handling whatever arrives meanwhile."""
        while True:
            self._pull_serial += 1
            ref = f"{self.name}-pull-{self._pull_serial}"
            self.pulls += 1
            refusals = self.refusals
            await send(ws, {"type": "sync.pull", "id": ref, "since": self.version})
            while True:
                frame = await recv(ws)
                if frame["type"] == "sync.changes" and frame["ref"] == ref:
                    break
                if frame["type"] in ("sync.ack", "error"):
                    await self.handle(ws, frame)
                    if self.refusals != refusals:  # this pull may be the one refused
                        break
                # deltas arriving meanwhile are covered by this pull or the next
            if frame["type"] != "sync.changes":
                await asyncio.sleep(BACKOFF_S)
                continue
            for change in frame["changes"]:
                if change["version"] > self.version:
                    self.apply(change)
            if not frame["has_more"] and self.version >= frame["version"]:
                return

    async def push(
        self, ws: ClientConnection, ref: str, mutations: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Push and wait for the ack; refused as too fast or busy, back off and resend
        (the same mutation ids: a resend of what did get written is a duplicate)."""
        # `rate_limited` may name no frame (refused unread): any refusal after the
        # push may be the push's, and resending is harmless.
        while True:
            refusals = self.refusals
            await send(ws, {"type": "sync.push", "id": ref, "mutations": mutations})
            while ref not in self.acks and self.refusals == refusals:
                await self.handle(ws, await recv(ws))
            if ref in self.acks:
                return self.acks.pop(ref)
            await asyncio.sleep(BACKOFF_S)

    async def until_ack(self, ws: ClientConnection, ref: str) -> dict[str, Any]:
        while ref not in self.acks:
            await self.handle(ws, await recv(ws))
        return self.acks.pop(ref)


def random_mutations(rng: Any, replica: Replica, device: str, serial: int) -> list[dict[str, Any]]:
    """1-3 mutations a device could plausibly make, from what its replica knows."""
    live_threads = [t for t, (_, deleted) in replica.threads.items() if not deleted]
    live_messages = [m for m, (_, _, deleted) in replica.messages.items() if not deleted]
    out: list[dict[str, Any]] = []
    for n in range(rng.randint(1, 3)):
        mid = f"{device}-{serial}-{n}"
        roll = rng.random()
        if not live_threads or roll < 0.15:
            tid = str(uuid.uuid4())
            live_threads.append(tid)
            out.append(
                {
                    "mutation_id": mid,
                    "entity": "thread",
                    "op": "upsert",
                    "id": tid,
                    "data": {"title": f"t {mid}"},
                }
            )
        elif roll < 0.65:
            out.append(
                {
                    "mutation_id": mid,
                    "entity": "message",
                    "op": "upsert",
                    "id": str(uuid.uuid4()),
                    "data": {
                        "thread_id": rng.choice(live_threads),
                        "role": "user",
                        "content": f"m {mid}",
                    },
                }
            )
        elif roll < 0.8 and live_messages:
            target = rng.choice(live_messages)
            tid = replica.messages[target][0]
            out.append(
                {
                    "mutation_id": mid,
                    "entity": "message",
                    "op": "upsert",
                    "id": target,
                    "data": {"thread_id": tid, "role": "user", "content": f"edited {mid}"},
                }
            )
        elif roll < 0.9:
            out.append(
                {
                    "mutation_id": mid,
                    "entity": "thread",
                    "op": "upsert",
                    "id": rng.choice(live_threads),
                    "data": {"title": f"renamed {mid}"},
                }
            )
        elif roll < 0.97 and live_messages:
            out.append(
                {
                    "mutation_id": mid,
                    "entity": "message",
                    "op": "delete",
                    "id": rng.choice(live_messages),
                    "data": None,
                }
            )
        else:
            out.append(
                {
                    "mutation_id": mid,
                    "entity": "thread",
                    "op": "delete",
                    "id": rng.choice(live_threads),
                    "data": None,
                }
            )
    return out


async def database_state(
    db: asyncpg.Connection, patient: uuid.UUID
) -> tuple[dict[str, Any], dict[str, Any]]:
    # A deleted row is a tombstone: its content is erased (sql/0008_erasure.sql).
    threads = {
        str(r["id"]): ERASED_THREAD if r["deleted"] else (r["title"], False)
        for r in await db.fetch(
            "SELECT id, title, deleted FROM threads WHERE patient_id = $1", patient
        )
    }
    messages = {
        str(r["id"]): ERASED_MESSAGE if r["deleted"] else (str(r["thread_id"]), r["content"], False)
        for r in await db.fetch(
            "SELECT id, thread_id, content, deleted FROM messages WHERE patient_id = $1", patient
        )
    }
    return threads, messages
