"""Revoking a subject (`painar-gateway revoke --sub`): its open sockets close on every
process within a second, its tokens issued until then are refused, later ones work."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from gateway.auth import issue_token
from tests.conftest import RedisServer
from tests.support import TEST_SECRET, gateway_env, make_settings, serve_gateway
from tests.wsclient import expect_close, open_socket, recv, session


def revoke(sub: uuid.UUID, database_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "revoke", "--sub", str(sub)],
        cwd=cwd,
        env=gateway_env(SECRET_KEY=TEST_SECRET, DATABASE_URL=database_url),
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_a_revoked_subject_is_closed_out_everywhere_and_its_old_tokens_refused(
    database_url: str, redis_server: RedisServer, second_process: str, tmp_path: Path
) -> None:
    patient = uuid.uuid4()
    token = issue_token(TEST_SECRET, role="patient", sub=patient, device_id="d")
    settings = make_settings(redis_url=redis_server.url)
    async with serve_gateway(settings, database_url) as first:
        async with (
            session(first.ws_url, token) as (here, _),
            session(second_process, token) as (there, _),
        ):
            done = await asyncio.to_thread(revoke, patient, database_url, tmp_path)
            assert done.returncode == 0, done.stderr
            revoked_at = time.monotonic()
            for ws in (here, there):
                error = (await recv(ws))["error"]
                assert (error["code"], error["message"]) == (
                    "unauthenticated",
                    "token revoked: get a new token",
                )
                assert await expect_close(ws) == 4401
            assert time.monotonic() - revoked_at < 1.0
        async with open_socket(first.ws_url, token) as ws:
            assert "revoked" in (await recv(ws))["error"]["message"]
            assert await expect_close(ws) == 4401
        async with httpx.AsyncClient(base_url=first.url) as http:
            refused = await http.get("/sync/", headers={"Authorization": f"Bearer {token}"})
            assert refused.status_code == 401 and "revoked" in refused.text
        # A token issued after the revocation (iat counts whole seconds) is good.
        await asyncio.sleep(max(0.0, 1.05 - (time.time() % 1)))
        fresh = issue_token(TEST_SECRET, role="patient", sub=patient, device_id="d")
        async with session(first.ws_url, fresh) as (_, ready):
            assert ready["patient_id"] == str(patient)
