"""The access audit trail: every observation started and ended, every snapshot and pull
by a clinician, every care-team grant, revoke and expiry, every denied attempt.

Append-only: the table refuses updates, and deletes except through `prune`, which takes
only rows older than it is told (sql/0005).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from storage.database import Connection

ActorRole = Literal["patient", "clinician", "admin", "system"]
Outcome = Literal["allowed", "denied", "ended"]


@dataclass(frozen=True)
class AuditEvent:
    actor_id: UUID | None
    actor_role: ActorRole
    patient_id: UUID | None
    action: str  # observe, unobserve, snapshot, pull, grant, revoke, a frame type...
    outcome: Outcome
    reason: str | None = None
    session_id: UUID | None = None


@dataclass(frozen=True)
class AuditRow:
    id: int
    at: datetime
    actor_id: UUID | None
    actor_role: str
    patient_id: UUID | None
    action: str
    outcome: str
    reason: str | None
    session_id: UUID | None

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        return {k: str(v) if isinstance(v, UUID) else v for k, v in out.items()}


@dataclass
class AuditPage:
    rows: list[AuditRow] = field(default_factory=list)
    next_after: int | None = None  # pass as `after_id` for the next page


async def record(conn: Connection, events: Sequence[AuditEvent]) -> None:
    if not events:
        return
    await conn.executemany(
        """
        INSERT INTO access_audit
            (actor_id, actor_role, patient_id, action, outcome, reason, session_id)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        """,
        [
            (e.actor_id, e.actor_role, e.patient_id, e.action, e.outcome, e.reason, e.session_id)
            for e in events
        ],
    )


async def events(
    conn: Connection,
    patient_id: UUID,
    *,
    since: datetime | None = None,
    after_id: int = 0,
    limit: int = 500,
) -> AuditPage:
    """A patient's events, oldest first, `limit` at a time."""
    rows = await conn.fetch(
        """
        SELECT id, at, actor_id, actor_role, patient_id, action, outcome, reason, session_id
        FROM access_audit
        WHERE patient_id = $1 AND ($2::timestamptz IS NULL OR at >= $2) AND id > $3
        ORDER BY id
        LIMIT $4
        """,
        patient_id,
        since,
        after_id,
        limit + 1,
    )
    page = AuditPage([AuditRow(**dict(row)) for row in rows[:limit]])
    if len(rows) > limit:
        page.next_after = page.rows[-1].id
    return page


async def prune(conn: Connection, before: datetime) -> int:
    """Delete the rows older than `before` (the retention job); how many went."""
    gone: int = await conn.fetchval("SELECT painar_prune_audit($1)", before)
    return gone
