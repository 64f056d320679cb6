"""The Starlette application: routes, middleware and the resources they share."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from gateway.auth import Authenticator
from gateway.broker import Broker
from gateway.broker.memory import MemoryBroker
from gateway.broker.redis import RedisBroker
from gateway.health import Probe, healthz, readyz
from gateway.hub import Hub
from gateway.metrics import HttpMetricsMiddleware, metrics_endpoint
from gateway.presence import MemoryPresenceStore, PresenceService, RedisPresenceStore
from gateway.providers import make_models
from gateway.replies import CANCEL_SIGNAL
from gateway.rest_chat import chat_endpoint
from gateway.rest_sync import sync_endpoint
from gateway.runtime import Runtime
from gateway.settings import Settings
from gateway.ws import WS_PATH, websocket_endpoint
from storage.database import create_pool


def create_app(settings: Settings, *, database_url: str) -> Starlette:
    """The gateway for a database whose schema is already prepared (`prepare_schema`)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = await create_pool(
            database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max
        )
        broker: Broker = RedisBroker(settings.redis_url) if settings.redis_url else MemoryBroker()
        hub = Hub(broker)
        await hub.start()
        presence = PresenceService(
            RedisPresenceStore(settings.redis_url) if settings.redis_url else MemoryPresenceStore(),
            hub,
        )
        presence.start()
        runtime = Runtime(
            settings=settings,
            pool=pool,
            hub=hub,
            presence=presence,
            authenticator=Authenticator(
                settings.secret_key.get_secret_value(),
                jwks_url=settings.jwks_url,
                dev_token=settings.dev_token.get_secret_value() if settings.debug else None,
            ),
            models=make_models(settings),
        )
        hub.signal_handlers[CANCEL_SIGNAL] = runtime.replies.cancel_signal

        probes: dict[str, Probe] = {
            "database": lambda: pool.fetchval("SELECT 1"),
            "broker": broker.ping,
        }
        app.state.runtime = runtime
        app.state.readiness_probes = probes
        # What start-up made lives as long as the process: keep it out of the collector's
        # full passes, whose pauses would otherwise show up as delivery latency.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await runtime.replies.close()
            await runtime.models.close()
            await presence.close()
            await hub.close()
            await pool.close()

    return Starlette(
        debug=False,  # tracebacks in responses could carry patient data
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/sync/", sync_endpoint, methods=["GET", "POST"]),
            Route("/chat/", chat_endpoint, methods=["POST"]),
        ],
        middleware=[Middleware(HttpMetricsMiddleware)],
        lifespan=lifespan,
    )


def asgi_entry(app: Starlette) -> ASGIApp:
    """What the server runs: `/v1/ws` goes straight to the WebSocket endpoint with the
    server's own `send` (the hot path of every fan-out delivery skips Starlette's
    per-message wrappers); everything else, lifespan included, goes to `app`."""

    async def entry(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == WS_PATH:
            scope["app"] = app
            await websocket_endpoint(WebSocket(scope, receive, send), send)
            return
        await app(scope, receive, send)

    return entry
