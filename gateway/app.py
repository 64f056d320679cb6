"""The Starlette application: routes, middleware and the resources they share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from gateway.health import Probe, healthz, readyz
from gateway.metrics import HttpMetricsMiddleware, metrics_endpoint
from gateway.settings import Settings
from storage.database import create_pool


def create_app(settings: Settings, *, database_url: str) -> Starlette:
    """The gateway for a database whose schema is already prepared (`prepare_schema`)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = await create_pool(
            database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max
        )
        redis = Redis.from_url(settings.redis_url) if settings.redis_url else None
        probes: dict[str, Probe] = {"database": lambda: pool.fetchval("SELECT 1")}
        probes["broker"] = redis.ping if redis is not None else _memory_broker_ready
        app.state.settings = settings
        app.state.pool = pool
        app.state.readiness_probes = probes
        try:
            yield
        finally:
            if redis is not None:
                await redis.aclose()
            await pool.close()

    return Starlette(
        debug=False,  # tracebacks in responses could carry patient data
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        middleware=[Middleware(HttpMetricsMiddleware)],
        lifespan=lifespan,
    )


async def _memory_broker_ready() -> None:
    """The in-process broker is ready whenever the process is."""
