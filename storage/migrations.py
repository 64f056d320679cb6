"""Applies the numbered SQL files in `sql/` in order, each once, across any number of
processes starting together.

Each file runs in its own transaction together with the row that records it (name and
SHA-256 of the file as written), so a failed migration leaves nothing behind. A
PostgreSQL advisory lock held for the whole run makes concurrent runners take turns:
the second one finds the work done. An applied file whose checksum changed is refused —
migrations are immutable once applied; add a new file instead.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

# Arbitrary constant shared by every gateway process: "painar migrations".
ADVISORY_LOCK_KEY = 0x7061696E6172

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """The migrations on disk and in the database disagree; nothing was applied."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def sql(self, params: dict[str, str]) -> str:
        text = self.path.read_text(encoding="utf-8")
        for key, value in params.items():
            text = text.replace("{{" + key + "}}", value)
        if "{{" in text:
            raise MigrationError(f"{self.path.name}: unknown placeholder left in the file")
        return text


def default_directory() -> Path:
    """`storage/sql` inside an installed wheel, else the repository's `sql/`."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "sql", here.parent / "sql"):
        if candidate.is_dir():
            return candidate
    raise MigrationError("no migrations directory found (expected sql/ beside storage/)")


def discover(directory: Path) -> list[Migration]:
    migrations: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        migrations.append(Migration(int(match[1]), match[2], path))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a number")
    return migrations


_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def migrate(
    conn: asyncpg.Connection,
    params: dict[str, str],
    directory: Path | None = None,
) -> list[str]:
    """Apply every pending migration; returns the names applied by this call."""
    migrations = discover(directory or default_directory())
    await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
    try:
        await conn.execute(_CREATE_TABLE)
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        applied = {row["version"]: row for row in rows}
        on_disk = {m.version: m for m in migrations}
        for version, row in sorted(applied.items()):
            migration = on_disk.get(version)
            if migration is None:
                raise MigrationError(
                    f"migration {version:04d}_{row['name']} is applied but its file is missing"
                )
            if migration.checksum != row["checksum"]:
                raise MigrationError(
                    f"{migration.path.name} was edited after it was applied; "
                    "applied migrations are immutable, add a new file instead"
                )
        done: list[str] = []
        for migration in migrations:
            if migration.version in applied:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql(params))
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            log.info("applied migration %s", migration.path.name)
            done.append(migration.path.name)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)
