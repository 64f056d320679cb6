"""Sync: devices push mutations and pull changes (over the socket and the original REST
routes alike).

Conflict policy: the server's order wins — mutations apply in the order they reach the
change log, each push's in its own order, and the last write to an entity is its state.
A delete is final: an upsert of a deleted thread or message is rejected with `conflict`,
and deleting a thread deletes its messages. A replayed mutation (same device, same
`mutation_id`) is reported as a duplicate and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from gateway import tracing
from gateway.sync.metrics import SYNC_MUTATIONS, SYNC_PULLS
from gateway.sync.writes import ChangeWriter, wire_change
from protocol.codes import ErrorCode
from protocol.frames import (
    Change,
    MessageFields,
    PainReportFields,
    RejectedMutation,
    ServerFrame,
    ThreadFields,
)
from protocol.mutations import InvalidMutation, ValidMutation, parse_mutation
from storage.changes import (
    Applied,
    Duplicate,
    MessageData,
    Mutation,
    PainReportData,
    Rejected,
    ThreadData,
    WriteResult,
    changes_since,
    current_version,
)
from storage.database import Connection, Database

DEFAULT_PULL_LIMIT = 500
REUSED_MUTATION_ID = (
    "mutation_id: this device already used it for a different change "
    "(a retry must repeat the change exactly; a new change needs a new mutation_id)"
)


@dataclass
class PushResult:
    version: int
    applied: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    rejected: list[RejectedMutation] = field(default_factory=list)


@dataclass(frozen=True)
class Pulled:
    version: int  # the patient's latest
    changes: list[Change]  # after `since`, oldest first
    has_more: bool


class WritesBusy(Exception):
    """The patient has as many pushes being written on this process as allowed: each
    holds a connection while it waits for the patient's lock, so more would only take
    the pool from everyone else. The client retries; str() is the message for it."""

    def __str__(self) -> str:
        return "patient_id: as many pushes as allowed are being written; retry shortly"


class SyncService:
    def __init__(
        self, db: Database, writer: ChangeWriter, *, max_writes_per_patient: int, page_bytes: int
    ) -> None:
        self.db = db
        self.writer = writer
        self.max_writes = max_writes_per_patient
        self.page_bytes = page_bytes  # a pulled page's size bound (it fits the send queue)
        self._writing: dict[UUID, int] = {}

    async def push(
        self,
        patient_id: UUID,
        device_id: str,
        raw_mutations: Sequence[Any],
        *,
        origin: float | None = None,
        committed: Callable[[PushResult], None] | None = None,
    ) -> PushResult:
        """Write the valid mutations; `committed` gets the result once they are stored,
        before their sync.delta is published (so a socket's sync.ack comes first).
        WritesBusy when the patient has as many writes running as allowed."""
        with tracing.span(
            "sync.push", patient_id=str(patient_id), mutations=len(raw_mutations)
        ) as span:
            result = await self._push(patient_id, device_id, raw_mutations, origin, committed)
            span.set(changes=len(result.applied), rejected=len(result.rejected))
            return result

    async def _push(
        self,
        patient_id: UUID,
        device_id: str,
        raw_mutations: Sequence[Any],
        origin: float | None,
        committed: Callable[[PushResult], None] | None,
    ) -> PushResult:
        parsed = [parse_mutation(raw) for raw in raw_mutations]
        valid = [p for p in parsed if isinstance(p, ValidMutation)]
        writing = self._writing.get(patient_id, 0)
        if writing >= self.max_writes:
            raise WritesBusy
        result: PushResult | None = None  # set once stored: the write then counts no more

        async def after_commit(conn: Connection, written: WriteResult) -> list[ServerFrame]:
            nonlocal result
            result = _push_result(parsed, written)
            # Stored: the write no longer counts against the patient's cap (only its
            # publish is left), so a client that got its ack has room for the next.
            self._done_writing(patient_id)
            if committed is not None:
                committed(result)  # before the push's own sync.delta is published
            return []

        self._writing[patient_id] = writing + 1
        try:
            await self.writer.write(
                patient_id,
                [_stored(m) for m in valid],
                device_id=device_id,
                origin=origin,
                after_commit=after_commit,
            )
        finally:
            if result is None:  # not stored: still counted
                self._done_writing(patient_id)
        assert result is not None
        SYNC_MUTATIONS.labels("applied").inc(len(result.applied))
        SYNC_MUTATIONS.labels("duplicate").inc(len(result.duplicates))
        SYNC_MUTATIONS.labels("rejected").inc(len(result.rejected))
        return result

    def _done_writing(self, patient_id: UUID) -> None:
        left = self._writing[patient_id] - 1
        if left:
            self._writing[patient_id] = left
        else:
            del self._writing[patient_id]

    async def pull(self, patient_id: UUID, since: int, limit: int) -> Pulled:
        """The changes after `since`, read consistently with the latest version."""
        async with self.db.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                version = await current_version(conn, patient_id)
                changes, has_more = await changes_since(
                    conn, patient_id, since, limit, self.page_bytes
                )
        SYNC_PULLS.inc()
        return Pulled(version, [wire_change(c) for c in changes], has_more)

    async def version(self, patient_id: UUID) -> int:
        """The patient's latest sync version (0 before any change)."""
        async with self.db.acquire() as conn:
            return await current_version(conn, patient_id)


def _stored(m: ValidMutation) -> Mutation:
    data: ThreadData | MessageData | PainReportData | None = None
    if isinstance(m.data, PainReportFields):
        data = PainReportData(
            intensity=m.data.intensity,
            svg_path=m.data.svg_path,
            region=m.data.region,
            qualities=tuple(m.data.qualities),
            note=m.data.note,
            onset_at=m.data.onset_at,
            recorded_at=m.data.recorded_at,
            thread_id=m.data.thread_id,
        )
    elif isinstance(m.data, ThreadFields):
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


def _push_result(
    parsed: Sequence[ValidMutation | InvalidMutation], written: WriteResult
) -> PushResult:
    """Each pushed mutation's outcome, in the order pushed."""
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
        elif isinstance(outcome, Duplicate) and outcome.same:
            result.duplicates.append(mutation.mutation_id)
        elif isinstance(outcome, Duplicate):
            result.rejected.append(
                RejectedMutation(
                    mutation_id=mutation.mutation_id,
                    code=ErrorCode.CONFLICT,
                    message=REUSED_MUTATION_ID,
                )
            )
        else:
            assert isinstance(outcome, Rejected)
            result.rejected.append(
                RejectedMutation(
                    mutation_id=mutation.mutation_id, code=outcome.code, message=outcome.message
                )
            )
    return result
