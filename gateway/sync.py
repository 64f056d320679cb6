"""Sync: devices push mutations and pull changes (over the socket and the original REST
routes alike).

Conflict policy: the server's order wins — mutations apply in the order they reach the
change log, each push's in its own order, and the last write to an entity is its state.
A delete is final: an upsert of a deleted thread or message is rejected with `conflict`,
and deleting a thread deletes its messages. A replayed mutation (same device, same
`mutation_id`) is reported as a duplicate and changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

from gateway.auth import Identity
from gateway.changefeed import wire_change, write_changes
from gateway.metrics import SYNC_MUTATIONS, SYNC_PULLS
from gateway.runtime import Runtime
from protocol.codec import ProtocolError
from protocol.codes import ErrorCode
from protocol.frames import (
    Change,
    ClientFrame,
    MessageFields,
    RejectedMutation,
    SyncAck,
    SyncChanges,
    SyncPull,
    SyncPush,
    ThreadFields,
)
from protocol.mutations import InvalidMutation, ValidMutation, parse_mutation
from storage.changes import (
    Applied,
    Duplicate,
    MessageData,
    Mutation,
    Rejected,
    ThreadData,
    changes_since,
    current_version,
)

if TYPE_CHECKING:
    from gateway.session import Session

DEFAULT_PULL_LIMIT = 500


@dataclass
class PushResult:
    version: int
    applied: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    rejected: list[RejectedMutation] = field(default_factory=list)


def device_key(identity: Identity) -> str:
    """Whose mutation ids these are: the token's device, else the subject itself."""
    return identity.device_id or f"sub:{identity.sub}"


async def push(
    runtime: Runtime,
    patient_id: UUID,
    device_id: str,
    raw_mutations: Sequence[Any],
    *,
    origin: float | None = None,
) -> PushResult:
    parsed = [parse_mutation(raw) for raw in raw_mutations]
    valid = [p for p in parsed if isinstance(p, ValidMutation)]
    written = await write_changes(
        runtime, patient_id, [_stored(m) for m in valid], device_id=device_id, origin=origin
    )
    result = PushResult(version=written.version)
    outcomes = iter(written.results)
    for mutation in parsed:
        if isinstance(mutation, InvalidMutation):
            reject = RejectedMutation(
                mutation_id=mutation.mutation_id, code=mutation.code, message=mutation.message
            )
            result.rejected.append(reject)
            continue
        outcome = next(outcomes)
        if isinstance(outcome, Applied):
            result.applied.append(mutation.mutation_id)
        elif isinstance(outcome, Duplicate):
            result.duplicates.append(mutation.mutation_id)
        else:
            assert isinstance(outcome, Rejected)
            result.rejected.append(
                RejectedMutation(
                    mutation_id=mutation.mutation_id, code=outcome.code, message=outcome.message
                )
            )
    SYNC_MUTATIONS.labels("applied").inc(len(result.applied))
    SYNC_MUTATIONS.labels("duplicate").inc(len(result.duplicates))
    SYNC_MUTATIONS.labels("rejected").inc(len(result.rejected))
    return result


def _stored(m: ValidMutation) -> Mutation:
    data: ThreadData | MessageData | None = None
    if isinstance(m.data, ThreadFields):
        data = ThreadData(title=m.data.title)
    elif isinstance(m.data, MessageFields):
        data = MessageData(
            thread_id=m.data.thread_id,
            role="user",
            content=m.data.content,
            svg_path=m.data.svg_path,
            source="sync",
            created_at=m.data.created_at,
        )
    return Mutation(m.entity, m.op, m.id, data, m.mutation_id)


async def pull(
    runtime: Runtime, patient_id: UUID, since: int, limit: int
) -> tuple[int, list[Change], bool]:
    """(latest version, changes after `since`, whether more follow), read consistently."""
    async with runtime.pool.acquire() as conn:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            version = await current_version(conn, patient_id)
            changes, has_more = await changes_since(conn, patient_id, since, limit)
    SYNC_PULLS.inc()
    return version, [wire_change(c) for c in changes], has_more


async def handle_push(session: Session, frame: ClientFrame) -> None:
    assert isinstance(frame, SyncPush)
    identity = session.identity
    assert identity.patient_id is not None  # sync.push is for patients only
    result = await push(
        session.runtime,
        identity.patient_id,
        device_key(identity),
        frame.mutations,
        origin=time.time(),
    )
    session.send(
        SyncAck(
            ref=frame.id,
            version=result.version,
            applied=result.applied,
            duplicates=result.duplicates,
            rejected=result.rejected,
        )
    )


async def handle_pull(session: Session, frame: ClientFrame) -> None:
    assert isinstance(frame, SyncPull)
    identity = session.identity
    patient_id = identity.patient_id
    if identity.role == "clinician":
        session.send_error(
            ProtocolError(ErrorCode.FORBIDDEN, "patient_id: not observing this patient", frame.id)
        )
        return
    assert patient_id is not None
    if frame.patient_id is not None and frame.patient_id != patient_id:
        session.send_error(
            ProtocolError(ErrorCode.FORBIDDEN, "patient_id: not this session's patient", frame.id)
        )
        return
    version, changes, has_more = await pull(
        session.runtime, patient_id, frame.since, frame.limit or DEFAULT_PULL_LIMIT
    )
    session.send(
        SyncChanges(
            ref=frame.id,
            patient_id=patient_id,
            since=frame.since,
            version=version,
            changes=changes,
            has_more=has_more,
        )
    )
