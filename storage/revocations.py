"""Revoked subjects: tokens of a subject issued before its revocation are no longer good."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from storage.database import Connection


@dataclass(frozen=True)
class Revocation:
    sub: UUID
    revoked_before: datetime
    revoked_at: datetime


async def revoke(conn: Connection, sub: UUID) -> Revocation:
    """Every token of `sub` issued until now is revoked."""
    row = await conn.fetchrow(
        """
        INSERT INTO token_revocations AS r (sub, revoked_before) VALUES ($1, clock_timestamp())
        ON CONFLICT (sub) DO UPDATE
            SET revoked_before = EXCLUDED.revoked_before, revoked_at = clock_timestamp()
        RETURNING sub, revoked_before, revoked_at
        """,
        sub,
    )
    assert row is not None
    return Revocation(**dict(row))


async def revoked_since(conn: Connection, since: datetime | None) -> list[Revocation]:
    """Revocations made after `since` (all of them for None), oldest first."""
    rows = await conn.fetch(
        """
        SELECT sub, revoked_before, revoked_at FROM token_revocations
        WHERE $1::timestamptz IS NULL OR revoked_at > $1
        ORDER BY revoked_at
        """,
        since,
    )
    return [Revocation(**dict(row)) for row in rows]
