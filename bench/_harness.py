"""What the realtime benchmarks share: an embedded PostgreSQL, a Redis server and gateway
processes on loopback, all started here and stopped on the way out."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx

from storage.database import prepare_schema
from storage.embedded import EmbeddedPostgres

SECRET = "bench-secret-key-of-at-least-32-characters"


@contextmanager
def services() -> Iterator[tuple[str, str, Path]]:
    """(database URL, Redis URL, scratch directory)."""
    with tempfile.TemporaryDirectory(prefix="painar-bench-") as scratch:
        directory = Path(scratch)
        redis = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                "0",
                "--unixsocket",
                str(directory / "redis.sock"),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            with EmbeddedPostgres(directory) as dsn:
                asyncio.run(prepare_schema(dsn, vector_dim=1536))
                yield dsn, f"unix://{directory / 'redis.sock'}", directory
        finally:
            redis.terminate()
            redis.wait(10)


@asynccontextmanager
async def gateways(
    count: int, dsn: str, redis_url: str, **env: str
) -> AsyncIterator[list[tuple[int, int]]]:
    """`count` gateway processes; yields (pid, port) for each."""
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}

    def command(port: int) -> tuple[list[str], dict[str, str]]:
        process_env = {
            **base,
            "DATABASE_URL": dsn,
            "REDIS_URL": redis_url,
            "SECRET_KEY": SECRET,
            "PORT": str(port),
            "LOG_LEVEL": "WARNING",
            "SUMMARY_AT": "off",  # no summary run competing with what is measured
            **env,
        }
        return [sys.executable, "-m", "gateway", "serve", "--no-migrate"], process_env

    async with _servers(count, command, "gateway") as started:
        yield started


@asynccontextmanager
async def floors(count: int, redis_url: str) -> AsyncIterator[list[tuple[int, int]]]:
    """`count` processes of the floor (bench/floor.py); yields (pid, port) for each."""

    def command(port: int) -> tuple[list[str], dict[str, str]]:
        return [sys.executable, "-m", "bench.floor", str(port), redis_url], dict(os.environ)

    async with _servers(count, command, "floor") as started:
        yield started


@asynccontextmanager
async def _servers(
    count: int, command: Callable[[int], tuple[list[str], dict[str, str]]], what: str
) -> AsyncIterator[list[tuple[int, int]]]:
    """`count` processes of `command(port)`, each on a port of its own; yields (pid,
    port) once each answers GET /readyz, and stops them on the way out."""
    processes: list[tuple[asyncio.subprocess.Process, int]] = []
    try:
        for _ in range(count):
            port = free_port()
            argv, process_env = command(port)
            process = await asyncio.create_subprocess_exec(*argv, env=process_env)
            processes.append((process, port))
        async with httpx.AsyncClient() as http:
            for _, port in processes:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    try:
                        if (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.1)
                else:
                    raise RuntimeError(f"{what} on port {port} did not become ready")
        yield [(process.pid, port) for process, port in processes]
    finally:
        for process, _ in processes:
            with contextlib.suppress(ProcessLookupError):  # one a benchmark stopped itself
                process.terminate()
        for process, _ in processes:
            await process.wait()


@asynccontextmanager
async def stand_in_model(**behaviour: object) -> AsyncIterator[str]:
    """The suite's stand-in OpenAI-format server (tests/fake_openai.py) in a process of its
    own, set to `behaviour` (fields of tests.fake_openai.Behaviour); yields its base URL
    (append `/v1` for OPENAI_BASE_URL) once it answers."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench._upstream", str(port)
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base) as http:
            for _ in range(300):
                try:
                    (await http.post("/behaviour", json=behaviour)).raise_for_status()
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            else:
                raise RuntimeError("the stand-in model server did not start")
        yield base
    finally:
        process.terminate()
        await process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """Seconds of CPU spent, all cores, all processes, since boot (from /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]
