"""Connection pool and the checks that the database matches this gateway's settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy
from pgvector.asyncpg import register_vector

from storage.migrations import MigrationError, migrate

Pool = asyncpg.Pool
# A plain connection or one lent by the pool; storage functions take either.
Connection = asyncpg.Connection | PoolConnectionProxy


def _default(value: object) -> str:
    # asyncpg returns its own UUID class, which orjson does not know.
    return str(value)


def _encode_json(value: object) -> str:
    return orjson.dumps(value, default=_default).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb",
        encoder=_encode_json,
        decoder=orjson.loads,
        schema="pg_catalog",
    )
    await register_vector(conn)


async def connect(dsn: str) -> asyncpg.Connection:
    """One connection set up like the pool's (for scripts, tools and tests)."""
    conn: asyncpg.Connection = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn


# Set while a connection goes back to the pool from a block that only read (see
# Database.acquire): asyncpg runs the reset in a task that copies this context.
_READ_ONLY: ContextVar[bool] = ContextVar("painar_read_only_release", default=False)


async def _reset_connection(conn: asyncpg.Connection) -> None:
    # What a connection can carry back to the pool here is an advisory lock (the change
    # log's patient lock is released this way, see apply_mutations); the gateway uses no
    # cursors, LISTEN or session settings, so asyncpg's fuller default reset is not needed.
    # A block that only read took none: its round trip is saved (a connect pays one less).
    if not _READ_ONLY.get():
        await conn.execute("SELECT pg_advisory_unlock_all()")


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> Pool:
    """A pool whose connections speak jsonb as Python values and vector as lists of floats.

    The schema must be migrated first: the vector type is looked up on connect.
    """
    pool: Pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_reset_connection,
    )
    return pool


class PoolExhausted(Exception):
    """No connection became free within the acquire timeout: the database is busy (the
    caller answers `busy`/503 and the client retries, instead of everyone waiting)."""


class DatabaseUnavailable(Exception):
    """PostgreSQL cannot be reached, or dropped the connection mid-statement (a restart,
    a failover): nothing was committed; the caller answers with a retryable
    `unavailable`/503, and the pool reconnects by itself once the server is back."""


def _unreachable(exc: BaseException) -> bool:
    return isinstance(
        exc,
        OSError
        | asyncpg.PostgresConnectionError  # class 08, connection exceptions
        | asyncpg.InterfaceError  # the connection was closed under the statement
        | asyncpg.CannotConnectNowError  # starting up or shutting down
        | asyncpg.AdminShutdownError
        | asyncpg.CrashShutdownError,
    )


@dataclass(frozen=True)
class PoolUse:
    in_use: int
    idle: int
    max: int


class Database:
    """The gateway's pool, made at start-up: what uses the database is built before the
    event loop runs (an asyncpg pool belongs to the loop it was made in)."""

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        acquire_timeout_s: float | None = None,
    ) -> None:
        self._dsn = dsn
        self._sizes = (min_size, max_size)
        self._acquire_timeout_s = acquire_timeout_s
        self._pool: Pool | None = None

    async def open(self) -> None:
        min_size, max_size = self._sizes
        self._pool = await create_pool(self._dsn, min_size=min_size, max_size=max_size)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    @asynccontextmanager
    async def acquire(self, *, read_only: bool = False) -> AsyncIterator[PoolConnectionProxy]:
        """A connection for `async with`, back to the pool on the way out; PoolExhausted
        when none is free within the acquire timeout, DatabaseUnavailable when the server
        cannot be reached (then or while the block runs). `read_only`: the block runs
        plain reads that take no lock and leave no session state, so the connection goes
        back without the reset's round trip."""
        if self._pool is None:
            raise RuntimeError("the database is not open")
        try:
            conn = await self._pool.acquire(timeout=self._acquire_timeout_s)
        except TimeoutError:
            raise PoolExhausted from None
        except Exception as exc:
            # Refused while the pool opened a connection ("not currently accepting
            # connections", too many connections, ...): the server cannot serve us now.
            # asyncpg's pool can also trip over its own background reconnect then
            # (InternalClientError: "connect() called while another connection exists").
            refused = asyncpg.PostgresError | asyncpg.exceptions.InternalClientError
            if _unreachable(exc) or isinstance(exc, refused):
                raise DatabaseUnavailable from exc
            raise
        try:
            yield conn
        except Exception as exc:
            if _unreachable(exc):
                raise DatabaseUnavailable from exc
            raise
        finally:
            released = _READ_ONLY.set(read_only)
            try:
                await self._pool.release(conn)
            except Exception as exc:  # a connection that died cannot be reset: dropped
                if not _unreachable(exc):
                    raise
            finally:
                _READ_ONLY.reset(released)

    def use(self) -> PoolUse:
        pool = self._pool
        if pool is None:
            return PoolUse(0, 0, self._sizes[1])
        idle = pool.get_idle_size()
        return PoolUse(pool.get_size() - idle, idle, pool.get_max_size())

    async def ping(self) -> None:
        async with self.acquire() as conn:
            await conn.fetchval("SELECT 1")


async def prepare_schema(dsn: str, *, vector_dim: int, apply: bool = True) -> list[str]:
    """Apply pending migrations (when `apply`), then check the stored vector size."""
    conn = await asyncpg.connect(dsn)
    try:
        done = await migrate(conn, {"vector_dim": str(vector_dim)}) if apply else []
        await check_vector_dim(conn, vector_dim)
        return done
    finally:
        await conn.close()


async def check_vector_dim(conn: asyncpg.Connection, vector_dim: int) -> None:
    stored: Any = await conn.fetchval(
        """
        SELECT atttypmod FROM pg_attribute
        WHERE attrelid = to_regclass('memories') AND attname = 'embedding'
        """
    )
    if stored is None:
        raise MigrationError("the database has no schema yet: run `painar-gateway migrate`")
    if stored != vector_dim:
        raise MigrationError(
            f"VECTOR_DIM is {vector_dim} but the database stores {stored}-dimensional "
            "memories; set VECTOR_DIM to match or use a new database"
        )
