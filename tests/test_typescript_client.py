"""The TypeScript client (clients/typescript/) against real gateways: two processes on
one PostgreSQL and Redis, with the stand-in model server; its own tests (Node's test
runner) converge two devices after a drop, stream a reply to two devices, end a reply
whose socket was cut while it streamed, follow a drain
to the other process and do not retry a refused token. Its types are the ones the
gateway's JSON Schema generates today, and it builds under `strict` without errors."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from protocol.schema import protocol_schema
from tests.chatkit import Upstream, slow_reply
from tests.conftest import RedisServer, gateway_process
from tests.support import TEST_SECRET

CLIENT = Path(__file__).parent.parent / "clients" / "typescript"
CONSOLE_COPY = Path(__file__).parent.parent / "gateway" / "console" / "static" / "client"


@pytest.fixture(scope="module")
def npm() -> str:
    binary = shutil.which("npm")
    assert binary, "npm is missing (just test installs Node.js)"
    assert (CLIENT / "node_modules" / "typescript").exists(), (
        "the client's packages are not installed: `npm ci --prefix clients/typescript` "
        "(just test does)"
    )
    return binary


def test_the_clients_types_are_generated_from_todays_schema(npm: str, tmp_path: Path) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(protocol_schema()))
    generated = tmp_path / "protocol.ts"
    done = subprocess.run(
        ["node", "scripts/types.mjs", str(schema), str(generated)],
        cwd=CLIENT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert generated.read_text() == (CLIENT / "src" / "protocol.ts").read_text(), (
        "clients/typescript/src/protocol.ts is stale: "
        "`painar-gateway schema | node clients/typescript/scripts/types.mjs`"
    )


def test_the_consoles_copy_of_the_client_is_the_clients_build(npm: str, tmp_path: Path) -> None:
    # The console runs without a build step: it serves the compiled client, committed.
    done = subprocess.run(
        ["node", "node_modules/typescript/bin/tsc", "-p", "tsconfig.json", "--outDir", tmp_path],
        cwd=CLIENT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    copied = sorted(path.name for path in CONSOLE_COPY.glob("*.js"))
    assert copied == ["audio.js", "client.js", "index.js", "replica.js"]
    for name in copied:
        assert (tmp_path / "src" / name).read_text() == (CONSOLE_COPY / name).read_text(), (
            f"gateway/console/static/client/{name} is stale: `just console-client`"
        )


async def test_the_typescript_client_against_two_gateway_processes(
    npm: str,
    database_url: str,
    redis_server: RedisServer,
    upstream: Upstream,
    tmp_path: Path,
) -> None:
    # Replies of 30 tokens over ~0.6 s: long enough to cut a socket while one streams.
    slow_reply(upstream.behaviour, tokens=30, delay_s=0.02)
    env = {"OPENAI_BASE_URL": upstream.url, "DRAIN_SECONDS": "5"}
    async with (
        gateway_process(database_url, redis_server.url, tmp_path / "a.log", **env) as (a, a_url),
        gateway_process(database_url, redis_server.url, tmp_path / "b.log", **env) as (_, b_url),
    ):
        # Not blocking this loop: the stand-in model server runs in it.
        node = await asyncio.create_subprocess_exec(
            npm,
            "test",
            "--silent",
            cwd=CLIENT,
            env={
                "PATH": f"{Path(npm).parent}:/usr/bin:/bin",
                "HOME": str(tmp_path),
                "PAINAR_GATEWAYS": f"{a_url},{b_url}",
                "PAINAR_SECRET": TEST_SECRET,
                "PAINAR_DRAIN_PID": str(a.pid),
            },
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(240):
            out, err = await node.communicate()
    stdout, stderr = out.decode(), err.decode()
    report = stdout[-6000:] + stderr[-3000:]
    assert node.returncode == 0, report
    assert "# pass 6" in stdout and "# fail 0" in stdout, report
