"""The one way the gateway writes threads and messages: apply through the change log,
then publish the committed changes as one `sync.delta` on the patient's topic.

Publishing happens after the commit, under a per-patient advisory lock held from before
the write until after the publish: two writers of one patient (on any processes)
commit and publish in the same order, so every socket sees the patient's deltas in
version order. If the publish fails, the changes are stored all the same and the
patient's sockets get `sync.version` and pull what they missed: when their own link to
the broker recovers, and when this process can publish again (its announcement, for
sockets whose link never dropped).

Other features write through `ChangeWriter` too (chat stores messages and replies with
it): this module is sync's interface to them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from gateway import tracing
from gateway.realtime.broker import BrokerUnavailable
from gateway.realtime.hub import Hub, patient_topic
from protocol.frames import Change, ServerFrame, SyncDelta, SyncVersion
from storage.changes import Change as StoredChange
from storage.changes import Mutation, WriteResult, apply_mutations
from storage.database import Connection, Database

# Runs after the commit, still under the patient's lock and on the same connection; the
# frames it returns are published just before the write's sync.delta.
AfterCommit = Callable[[Connection, WriteResult], Awaitable[Sequence[ServerFrame]]]


class ChangeWriter:
    def __init__(self, db: Database, hub: Hub) -> None:
        self.db = db
        self.hub = hub

    async def write(
        self,
        patient_id: UUID,
        mutations: Sequence[Mutation],
        *,
        device_id: str | None,
        origin: float | None = None,
        after_commit: AfterCommit | None = None,
    ) -> WriteResult:
        origin = origin or time.time()
        with tracing.span("sync.write", patient_id=str(patient_id), mutations=len(mutations)):
            return await self._write(patient_id, mutations, device_id, origin, after_commit)

    async def _write(
        self,
        patient_id: UUID,
        mutations: Sequence[Mutation],
        device_id: str | None,
        origin: float,
        after_commit: AfterCommit | None,
    ) -> WriteResult:
        # The patient's lock is held from before the write until the connection returns to
        # the pool, after the publish (see apply_mutations).
        async with self.db.acquire() as conn:
            with tracing.span("sync.commit") as span:
                result = await apply_mutations(
                    conn, patient_id, mutations, device_id=device_id, hold_until_release=True
                )
                span.set(changes=len(result.changes), version=result.version)
            frames = list(await after_commit(conn, result)) if after_commit is not None else []
            if result.changes:
                frames.append(
                    SyncDelta(
                        patient_id=patient_id,
                        version=result.version,
                        changes=[wire_change(c) for c in result.changes],
                    )
                )
            topic = patient_topic(patient_id)
            with tracing.span("sync.publish", frames=len(frames)) as span:
                try:
                    for frame in frames:
                        await self.hub.publish(topic, frame, origin)
                except BrokerUnavailable:
                    span.set(outcome="broker_unavailable")
                    # Stored. The other devices' links may never have dropped, so nothing
                    # else tells them: once Redis takes publishes again they get the
                    # write's version, and pull.
                    self.hub.announce(
                        topic, SyncVersion(patient_id=patient_id, version=result.version)
                    )
        return result


# Times inside a change's data, stored as PostgreSQL renders them in JSON ("+00:00"); on
# the wire they are datetimes like every other time of the protocol ("Z").
_DATA_TIMES = ("created_at", "updated_at", "onset_at", "recorded_at", "summarized_at")


def wire_data(data: dict[str, Any] | None) -> dict[str, Any] | None:
    """A change's data as devices receive it: unset fields left out, times in the
    protocol's one format."""
    if data is None:
        return None
    wired = {key: value for key, value in data.items() if value is not None}
    for key in _DATA_TIMES:
        value = wired.get(key)
        if isinstance(value, str):
            wired[key] = datetime.fromisoformat(value)
    return wired


def wire_change(change: StoredChange) -> Change:
    return Change(
        version=change.version,
        entity=change.entity,
        op=change.op,
        id=change.id,
        data=wire_data(change.data),
        device_id=change.device_id,
        mutation_id=change.mutation_id,
        at=change.at,
    )
