"""The one way the gateway writes threads and messages: apply through the change log,
then publish the committed changes as one `sync.delta` on the patient's topic.

Publishing happens after the commit, under a per-patient advisory lock held from before
the write until the publish returns: two writers of one patient (on any processes)
commit and publish in the same order, so every socket sees the patient's deltas in
version order. If the broker is down, the changes are stored all the same; sockets get
`sync.version` when the link recovers and pull what they missed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from uuid import UUID

from gateway.broker import BrokerUnavailable
from gateway.hub import patient_topic
from gateway.runtime import Runtime
from protocol.frames import Change, SyncDelta
from storage.changes import Change as StoredChange
from storage.changes import Mutation, WriteResult, apply_mutations

log = logging.getLogger(__name__)


def _lock_key(patient_id: UUID) -> int:
    return int.from_bytes(patient_id.bytes[:8], "big", signed=True)


async def write_changes(
    runtime: Runtime,
    patient_id: UUID,
    mutations: Sequence[Mutation],
    *,
    device_id: str | None,
    origin: float | None = None,
) -> WriteResult:
    origin = origin or time.time()
    key = _lock_key(patient_id)
    async with runtime.pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", key)
        try:
            result = await apply_mutations(conn, patient_id, mutations, device_id=device_id)
            if result.changes:
                delta = SyncDelta(
                    patient_id=patient_id,
                    version=result.version,
                    changes=[wire_change(c) for c in result.changes],
                )
                try:
                    await runtime.hub.publish(patient_topic(patient_id), delta, origin)
                except BrokerUnavailable:
                    pass  # stored; clients catch up through sync.version and sync.pull
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", key)
    return result


def wire_change(change: StoredChange) -> Change:
    return Change(
        version=change.version,
        entity=change.entity,
        op=change.op,
        id=change.id,
        data=change.data,
        device_id=change.device_id,
        mutation_id=change.mutation_id,
        at=change.at,
    )
