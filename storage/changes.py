"""The change log: the one way threads and messages are written.

`apply_mutations` applies a batch of one patient's mutations and appends one change per
applied mutation, numbered with the patient's next versions, in one transaction. The
patient's row is locked first, which serialises that patient's writers (other patients
are not affected): versions start at 1 and rise by exactly 1, and a rolled-back write
leaves no gap. A mutation whose `(device_id, mutation_id)` was applied before is reported
as a duplicate and changes nothing; the duplicate says whether it repeats that change
exactly (a replay) or is another change under a reused key (a client's bug, which the
caller refuses, naming its key field).

A rejected mutation writes nothing: each write either applies fully or matches no row,
and only then are read-only queries run to name the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from protocol.codes import ErrorCode
from storage.database import Connection

Entity = Literal["thread", "message", "pain_report"]
Op = Literal["upsert", "delete"]
Role = Literal["user", "assistant"]
Source = Literal["text", "voice", "sync"]
FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True)
class ThreadData:
    title: str = ""


@dataclass(frozen=True)
class MessageData:
    thread_id: UUID
    role: Role
    content: str
    svg_path: str | None = None
    source: Source = "sync"
    created_at: datetime | None = None
    # Assistant replies only: why the reply ended and the user message it answers.
    finish_reason: FinishReason | None = None
    reply_to: UUID | None = None


@dataclass(frozen=True)
class PainReportData:
    intensity: int  # 0-10, the numeric rating scale
    svg_path: str | None = None
    region: str | None = None
    qualities: tuple[str, ...] = ()
    note: str | None = None
    onset_at: datetime | None = None
    recorded_at: datetime | None = None  # None: now
    thread_id: UUID | None = None


@dataclass(frozen=True)
class ThreadSummaryData:
    """The summary job's write to a thread: its summary, of the patient's change log at
    `summarized_version` (a thread's summary only moves forward; the title stays)."""

    summary: str
    summarized_version: int


@dataclass(frozen=True)
class Mutation:
    entity: Entity
    op: Op
    id: UUID
    data: ThreadData | ThreadSummaryData | MessageData | PainReportData | None = None
    # With the writer's device id, the idempotency key. None for server-side writes.
    mutation_id: str | None = None


@dataclass(frozen=True)
class Change:
    """One row of the change log, as devices receive it."""

    version: int
    entity: Entity
    op: Op
    id: UUID
    data: dict[str, Any] | None
    device_id: str | None
    mutation_id: str | None
    at: datetime


@dataclass(frozen=True)
class Applied:
    change: Change


@dataclass(frozen=True)
class Duplicate:
    version: int  # the version the first application received
    same: bool = True  # the same change again (entity, op, id and the data it gave)


@dataclass(frozen=True)
class Rejected:
    code: ErrorCode
    message: str


MutationResult = Applied | Duplicate | Rejected


@dataclass
class WriteResult:
    version: int  # the patient's latest version after this write
    results: list[MutationResult] = field(default_factory=list)

    @property
    def changes(self) -> list[Change]:
        return [r.change for r in self.results if isinstance(r, Applied)]


async def apply_mutations(
    conn: Connection,
    patient_id: UUID,
    mutations: Sequence[Mutation],
    *,
    device_id: str | None = None,
    hold_until_release: bool = False,
) -> WriteResult:
    """Apply `mutations` in order for one patient; one result per mutation, same order.

    One round trip: the SQL function `painar_apply_mutations` (sql/0002) locks the
    patient's row, applies each mutation and appends its change, atomically.

    With `hold_until_release`, the patient's writers stay serialised past the commit: a
    session-level advisory lock on the patient is taken first and released only when the
    connection goes back to the pool (the pool's reset runs `pg_advisory_unlock_all()`,
    and a connection whose reset fails is closed). What the caller does after the commit
    — publishing the changes — then happens in version order across processes.
    """
    payload: list[dict[str, Any]] = []
    early: dict[int, Rejected] = {}  # refused before reaching the database
    for n, m in enumerate(mutations):
        data = _payload_data(m)
        if isinstance(data, Rejected):
            early[n] = data
            continue
        payload.append(
            {"entity": m.entity, "op": m.op, "id": m.id, "mutation_id": m.mutation_id, "data": data}
        )
    rows = await conn.fetch(
        "SELECT * FROM painar_apply_mutations($1, $2, $3, $4)",
        patient_id,
        device_id,
        patient_lock_key(patient_id) if hold_until_release else None,
        payload,
    )
    *outcomes, end = rows
    result = WriteResult(version=end["latest"])
    # Replays are rare (a lost answer): what they first wrote is read only for them.
    replayed = [row["version"] for row in outcomes if row["outcome"] == "duplicate"]
    first_writes = await _changes_at(conn, patient_id, replayed) if replayed else {}
    sent = iter(payload)
    from_database = iter(outcomes)
    for n, m in enumerate(mutations):
        if n in early:
            result.results.append(early[n])
            continue
        row, pushed = next(from_database), next(sent)
        if row["outcome"] == "duplicate":
            first = first_writes.get(row["version"])
            same = first is not None and _same_change(pushed, first)
            result.results.append(Duplicate(row["version"], same))
        elif row["outcome"] == "rejected":
            result.results.append(Rejected(ErrorCode(row["code"]), row["message"]))
        else:
            key = m.mutation_id if device_id is not None else None
            change = Change(
                row["version"], m.entity, m.op, m.id, row["data"], device_id, key, row["at"]
            )
            result.results.append(Applied(change))
    return result


def _payload_data(m: Mutation) -> dict[str, Any] | None | Rejected:
    if m.op == "delete":
        return None
    if m.entity == "thread":
        if isinstance(m.data, ThreadSummaryData):
            return {"summary": m.data.summary, "summarized_version": m.data.summarized_version}
        if not isinstance(m.data, ThreadData):
            return Rejected(ErrorCode.INVALID, "data: a thread upsert needs thread data")
        return {"title": m.data.title}
    if m.entity == "pain_report":
        if not isinstance(m.data, PainReportData):
            return Rejected(ErrorCode.INVALID, "data: a pain report upsert needs its data")
        report = m.data
        return {
            "intensity": report.intensity,
            "svg_path": report.svg_path,
            "region": report.region,
            "qualities": list(report.qualities),
            "note": report.note,
            "onset_at": _in_utc(report.onset_at),
            "recorded_at": _in_utc(report.recorded_at),
            "thread_id": report.thread_id,
        }
    if not isinstance(m.data, MessageData):
        return Rejected(ErrorCode.INVALID, "data: a message upsert needs message data")
    return {
        "thread_id": m.data.thread_id,
        "role": m.data.role,
        "content": m.data.content,
        "svg_path": m.data.svg_path,
        "source": m.data.source,
        "created_at": _in_utc(m.data.created_at),
        "finish_reason": m.data.finish_reason,
        "reply_to": m.data.reply_to,
    }


def _in_utc(moment: datetime | None) -> datetime | None:
    """A time without a zone is UTC."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


# Times the server fills in when a device gives none: a replay without them is the same.
_SERVER_TIMES = ("created_at", "recorded_at")


async def _changes_at(conn: Connection, patient_id: UUID, versions: list[int]) -> dict[int, Any]:
    rows = await conn.fetch(
        "SELECT version, entity, op, entity_id, data FROM changes"
        " WHERE patient_id = $1 AND version = ANY($2::bigint[])",
        patient_id,
        versions,
    )
    return {row["version"]: row for row in rows}


def _same_change(pushed: dict[str, Any], first: Any) -> bool:
    """Whether a mutation repeats the change its key first wrote: the same entity, op and
    id, and every value it gives equal to what was stored (times compared as instants)."""
    if (pushed["entity"], pushed["id"]) != (first["entity"], first["entity_id"]):
        return False
    if first["op"] == "delete" and first["data"] is None and pushed["op"] == "upsert":
        # Erased since (a delete blanks every earlier change of the entity): what it wrote
        # cannot be compared any more, and the entity is gone either way.
        return True
    if pushed["op"] != first["op"]:
        return False
    given, stored = pushed["data"] or {}, first["data"] or {}
    for key, value in given.items():
        if key not in stored:
            continue
        if value is None and (key in _SERVER_TIMES or stored[key] is None):
            continue  # no time given: the server's, whenever it was
        if isinstance(value, datetime):
            if stored[key] is None or datetime.fromisoformat(stored[key]) != value:
                return False
        elif value is None or stored[key] is None or str(value) != str(stored[key]):
            return False
    return True


def patient_lock_key(patient_id: UUID) -> int:
    """The patient's advisory lock key (a signed 64-bit slice of the id)."""
    return int.from_bytes(patient_id.bytes[:8], "big", signed=True)


async def current_version(conn: Connection, patient_id: UUID) -> int:
    version = await conn.fetchval("SELECT sync_version FROM patients WHERE id = $1", patient_id)
    return int(version or 0)


# What a change adds to a page besides its data (ids, version, timestamps, keys).
CHANGE_OVERHEAD_BYTES = 256


async def changes_since(
    conn: Connection, patient_id: UUID, since: int, limit: int, max_bytes: int
) -> tuple[list[Change], bool]:
    """The patient's changes with version > `since`, oldest first, at most `limit` of
    them and, past the first, at most about `max_bytes` of JSON (a page must fit the
    socket's send queue: 500 messages of 32,000 characters would not); the flag says
    whether more follow. One range scan of at most `limit + 1` rows of the log."""
    rows = await conn.fetch(
        """
        SELECT version, entity, op, entity_id, data, device_id, mutation_id, at, next_version
        FROM (
            SELECT *,
                   sum(size) OVER w - size AS bytes_before,
                   lead(version) OVER w AS next_version
            FROM (
                SELECT *, coalesce(octet_length(data::text), 0) + $5 AS size
                FROM changes WHERE patient_id = $1 AND version > $2
                ORDER BY version LIMIT $3 + 1
            ) head
            WINDOW w AS (ORDER BY version)
        ) page
        WHERE bytes_before = 0 OR bytes_before + size <= $4
        ORDER BY version LIMIT $3
        """,
        patient_id,
        since,
        limit,
        max_bytes,
        CHANGE_OVERHEAD_BYTES,
    )
    changes = [
        Change(
            r["version"],
            r["entity"],
            r["op"],
            r["entity_id"],
            r["data"],
            r["device_id"],
            r["mutation_id"],
            r["at"],
        )
        for r in rows
    ]
    return changes, bool(rows) and rows[-1]["next_version"] is not None
