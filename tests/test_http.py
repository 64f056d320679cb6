"""Health, readiness and metrics over real HTTP against the app under uvicorn."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from storage.database import prepare_schema
from storage.embedded import EmbeddedPostgres
from tests.conftest import RedisServer
from tests.support import TIMEOUT_S, eventually, make_settings, run_gateway, sample


@pytest.fixture
async def gateway(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with run_gateway(make_settings(), database_url) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT_S) as client:
            yield client


async def test_healthz_says_ok(gateway: httpx.AsyncClient) -> None:
    response = await gateway.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_reports_each_part(gateway: httpx.AsyncClient) -> None:
    response = await gateway.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}


async def test_metrics_count_requests_by_route_template(gateway: httpx.AsyncClient) -> None:
    await gateway.get("/healthz")
    assert (await gateway.get("/no/such/path/123")).status_code == 404
    assert (await gateway.post("/healthz")).status_code == 405
    response = await gateway.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert sample(text, "http_requests_total", method="GET", route="/healthz", status="200") >= 1
    assert sample(text, "http_requests_total", method="POST", route="/healthz", status="405") >= 1
    assert sample(text, "http_requests_total", method="GET", route="<unmatched>", status="404")
    assert (
        sample(
            text,
            "http_request_duration_seconds_count",
            method="GET",
            route="/healthz",
            status="200",
        )
        >= 1
    )
    assert "/no/such/path" not in text  # raw paths never become labels
    assert sample(text, "websocket_connections_open", role="patient") == 0


async def test_readyz_names_the_database_while_it_is_down(tmp_path: Path) -> None:
    """A database of its own, stopped and started again under the running gateway."""
    server = EmbeddedPostgres(tmp_path)
    dsn = await asyncio.to_thread(server.start)
    try:
        await prepare_schema(dsn, vector_dim=1536)
        async with run_gateway(make_settings(), dsn) as base_url:
            async with httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT_S) as client:
                assert (await client.get("/readyz")).status_code == 200

                await asyncio.to_thread(server.stop)
                response = await client.get("/readyz")
                assert response.status_code == 503
                assert response.json()["failing"] == ["database"]
                assert response.json()["checks"]["broker"] == "ok"
                assert (await client.get("/healthz")).status_code == 200

                await asyncio.to_thread(server.start)

                async def ready() -> bool:
                    return (await client.get("/readyz")).status_code == 200

                await eventually(ready, what="/readyz to recover with the database")
    finally:
        await asyncio.to_thread(server.stop)


async def test_readyz_names_the_broker_while_redis_is_down(
    database_url: str, redis_server: RedisServer
) -> None:
    settings = make_settings(redis_url=redis_server.url)
    async with run_gateway(settings, database_url) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT_S) as client:
            assert (await client.get("/readyz")).status_code == 200
            redis_server.stop()
            response = await client.get("/readyz")
            assert response.status_code == 503
            assert response.json()["failing"] == ["broker"]
            assert response.json()["checks"]["database"] == "ok"
