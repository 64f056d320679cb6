"""The migration runner against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import asyncpg
import pytest

from storage.database import prepare_schema
from storage.migrations import MigrationError, default_directory, migrate

PARAMS = {"vector_dim": "8"}


def copy_migrations(tmp_path: Path) -> Path:
    directory = tmp_path / "sql"
    shutil.copytree(default_directory(), directory)
    return directory


async def applied_names(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT name FROM schema_migrations ORDER BY version")
        return [row["name"] for row in rows]
    finally:
        await conn.close()


async def test_applies_every_file_once_in_order(blank_database_url: str) -> None:
    conn = await asyncpg.connect(blank_database_url)
    try:
        first = await migrate(conn, PARAMS)
        second = await migrate(conn, PARAMS)
    finally:
        await conn.close()
    on_disk = sorted(p.name for p in default_directory().glob("*.sql"))
    assert first == on_disk
    assert second == []
    assert await applied_names(blank_database_url) == [n[5:-4] for n in on_disk]


async def test_two_runners_starting_together_apply_each_migration_once(
    blank_database_url: str, tmp_path: Path
) -> None:
    directory = copy_migrations(tmp_path)
    # Slow enough that both runners are inside `migrate` at once; a second application
    # would fail, since CREATE TABLE without IF NOT EXISTS refuses an existing table.
    (directory / "9000_slow.sql").write_text("SELECT pg_sleep(0.3); CREATE TABLE slow (x int);")
    a, b = await asyncpg.connect(blank_database_url), await asyncpg.connect(blank_database_url)
    try:
        results = await asyncio.gather(migrate(a, PARAMS, directory), migrate(b, PARAMS, directory))
    finally:
        await a.close()
        await b.close()
    everything = sorted(p.name for p in directory.glob("*.sql"))
    assert sorted(results, key=len) == [[], everything]
    assert (await applied_names(blank_database_url))[-1] == "slow"


async def test_an_edited_applied_migration_is_refused(
    blank_database_url: str, tmp_path: Path
) -> None:
    directory = copy_migrations(tmp_path)
    conn = await asyncpg.connect(blank_database_url)
    try:
        await migrate(conn, PARAMS, directory)
        first = sorted(directory.glob("*.sql"))[0]
        first.write_text(first.read_text() + "\n-- edited\n")
        (directory / "9001_later.sql").write_text("CREATE TABLE later (x int);")
        with pytest.raises(MigrationError, match=f"{first.name} was edited"):
            await migrate(conn, PARAMS, directory)
        assert await conn.fetchval("SELECT to_regclass('later')") is None
    finally:
        await conn.close()


async def test_an_applied_migration_whose_file_is_gone_is_refused(
    blank_database_url: str, tmp_path: Path
) -> None:
    directory = copy_migrations(tmp_path)
    (directory / "9002_gone.sql").write_text("CREATE TABLE gone (x int);")
    conn = await asyncpg.connect(blank_database_url)
    try:
        await migrate(conn, PARAMS, directory)
        (directory / "9002_gone.sql").unlink()
        with pytest.raises(MigrationError, match="9002_gone is applied but its file is missing"):
            await migrate(conn, PARAMS, directory)
    finally:
        await conn.close()


async def test_a_failing_migration_leaves_nothing_behind(
    blank_database_url: str, tmp_path: Path
) -> None:
    directory = copy_migrations(tmp_path)
    (directory / "9003_broken.sql").write_text("CREATE TABLE half (x int); SELEC 1;")
    conn = await asyncpg.connect(blank_database_url)
    try:
        with pytest.raises(asyncpg.PostgresSyntaxError):
            await migrate(conn, PARAMS, directory)
        assert await conn.fetchval("SELECT to_regclass('half')") is None
        assert "broken" not in await applied_names(blank_database_url)
        # The lock was released: the next run (after the fix) proceeds.
        (directory / "9003_broken.sql").write_text("CREATE TABLE half (x int);")
        assert await migrate(conn, PARAMS, directory) == ["9003_broken.sql"]
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("name", "message"),
    [("1_short.sql", "named NNNN_name.sql"), ("0001_again.sql", "share a number")],
)
async def test_badly_named_migration_files_are_refused(
    blank_database_url: str, tmp_path: Path, name: str, message: str
) -> None:
    directory = copy_migrations(tmp_path)
    (directory / name).write_text("SELECT 1;")
    conn = await asyncpg.connect(blank_database_url)
    try:
        with pytest.raises(MigrationError, match=message):
            await migrate(conn, PARAMS, directory)
        assert await conn.fetchval("SELECT to_regclass('schema_migrations')") is None
    finally:
        await conn.close()


async def test_a_vector_dim_unlike_the_stored_one_is_refused(blank_database_url: str) -> None:
    await prepare_schema(blank_database_url, vector_dim=8)
    with pytest.raises(MigrationError, match="VECTOR_DIM is 16 but the database stores 8"):
        await prepare_schema(blank_database_url, vector_dim=16)


async def test_serving_without_migrating_names_the_missing_schema(
    blank_database_url: str,
) -> None:
    with pytest.raises(MigrationError, match="no schema yet"):
        await prepare_schema(blank_database_url, vector_dim=8, apply=False)
