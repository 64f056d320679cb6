"""Who is connected to a patient's topic, on any gateway process.

Presence is kept apart from pub/sub, in a store (gateway/realtime/presence_stores.py). A
join or leave writes the store and reads the members back in one round trip, shows them
to the process's own sockets of that patient, and publishes a small `presence.changed`
signal on the patient's topic carrying the process's id. Every other process answers a
signal by reading the store and sending one `presence` frame to its local sockets of
that patient. Either way at most one frame per patient per second, so a crowd joining
costs O(sockets), not O(sockets²).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from uuid import UUID

from gateway.realtime.hub import Hub, patient_topic
from gateway.realtime.presence_stores import (
    MEMBER_TTL_S,
    STORE_ERRORS,
    Member,
    PresenceStore,
)
from protocol.codec import encode
from protocol.frames import Observer, Presence

log = logging.getLogger(__name__)

SIGNAL = "presence.changed"
MIN_INTERVAL_S = 1.0


class PresenceService:
    def __init__(self, store: PresenceStore, hub: Hub) -> None:
        self.store = store
        self.hub = hub
        self._local: dict[UUID, dict[str, Member]] = {}  # this process's members
        self._pending: dict[UUID, asyncio.Task[None]] = {}
        self._last_sent: dict[UUID, float] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._me = hub.id.to_bytes(8, "big")  # signed on our signals
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
