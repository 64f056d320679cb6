"""Reading a patient's pain reports (they are written through the change log,
storage/changes.py, like threads and messages)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from uuid import UUID

from storage.database import Connection


@dataclass(frozen=True)
class PainReport:
    id: UUID
    intensity: int
    recorded_at: datetime
    region: str | None
    svg_path: str | None
    qualities: tuple[str, ...]
    note: str | None
    onset_at: datetime | None
    thread_id: UUID | None
    patient_id: UUID | None = None
    updated_at: datetime | None = None


_COLUMNS = "id, intensity, recorded_at, region, svg_path, qualities, note, onset_at, thread_id"
_EXPORTED = f"{_COLUMNS}, patient_id, updated_at"


async def recent_pain_reports(
    conn: Connection, patient_id: UUID, *, limit: int, since: datetime
) -> list[PainReport]:
    """The patient's live reports recorded since `since`, newest first, at most `limit`."""
    rows = await conn.fetch(
        f"""
        SELECT {_COLUMNS} FROM pain_reports
        WHERE patient_id = $1 AND NOT deleted AND recorded_at >= $2
        ORDER BY recorded_at DESC LIMIT $3
        """,
        patient_id,
        since,
        limit,
    )
    return [_report(row) for row in rows]


async def reports_between(
    conn: Connection,
    patient_id: UUID,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    thread_id: UUID | None = None,
) -> list[PainReport]:
    """The patient's live reports recorded in [since, until) (either open), of one thread
    if given, oldest first: a session, for export."""
    rows = await conn.fetch(
        f"""
        SELECT {_EXPORTED} FROM pain_reports
        WHERE patient_id = $1 AND NOT deleted
          AND ($2::timestamptz IS NULL OR recorded_at >= $2)
          AND ($3::timestamptz IS NULL OR recorded_at < $3)
          AND ($4::uuid IS NULL OR thread_id = $4)
        ORDER BY recorded_at, id
        """,
        patient_id,
        since,
        until,
        thread_id,
    )
    return [exported_report(row) for row in rows]


def _report(row: Any) -> PainReport:
    return PainReport(
        id=row["id"],
        intensity=row["intensity"],
        recorded_at=row["recorded_at"],
        region=row["region"],
        svg_path=row["svg_path"],
        qualities=tuple(row["qualities"]),
        note=row["note"],
        onset_at=row["onset_at"],
        thread_id=row["thread_id"],
    )


def exported_report(row: Any) -> PainReport:
    """A report with whose it is and when it last changed, as an export needs it."""
    return replace(_report(row), patient_id=row["patient_id"], updated_at=row["updated_at"])
