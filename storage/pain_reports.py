"""Reading a patient's pain reports (they are written through the change log,
storage/changes.py, like threads and messages)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
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


_COLUMNS = "id, intensity, recorded_at, region, svg_path, qualities, note, onset_at, thread_id"


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


def _report(row: object) -> PainReport:
    values = dict(row)  # type: ignore[call-overload]
    values["qualities"] = tuple(values["qualities"])
    return PainReport(**values)
