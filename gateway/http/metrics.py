"""HTTP metrics and the `/metrics` endpoint. Labels hold route templates, methods and
statuses only: never ids, paths with ids in them, or anything a patient wrote."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.http.health import Readiness
from storage.database import PoolUse

HTTP_REQUESTS = Counter(
    "http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time to answer an HTTP request, until the response starts",
    ["method", "route", "status"],
)

# Evaluated at each scrape, so that an alert needs no prober of its own.
READY = Gauge("gateway_ready", "1 when /readyz would answer 200 (evaluated at each scrape)")
READY_CHECKS = Gauge("gateway_ready_check", "1 when the part answers its readiness probe", ["part"])
DB_POOL = Gauge("db_pool_connections", "Database pool connections", ["state"])
DB_POOL_MAX = Gauge("db_pool_max_connections", "The database pool's largest size (DB_POOL_MAX)")

UNMATCHED_ROUTE = "<unmatched>"


class HttpMetricsMiddleware:
    """Counts and times HTTP requests by route template (`/sync/`, not the raw path)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method, route = scope["method"], _route_template(scope)
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                elapsed = time.perf_counter() - started
                HTTP_DURATION.labels(method, route, str(status)).observe(elapsed)
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            HTTP_REQUESTS.labels(method, route, str(status)).inc()


def _route_template(scope: Scope) -> str:
    partial = UNMATCHED_ROUTE  # path matched, method did not (405)
    for route in getattr(scope.get("app"), "routes", ()):
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return str(route.path)
        if match == Match.PARTIAL and partial == UNMATCHED_ROUTE:
            partial = str(route.path)
    return partial


class MetricsEndpoint:
    """`GET /metrics`: refreshes readiness and the pool's use, then every metric."""

    def __init__(self, readiness: Readiness, pool_use: Callable[[], PoolUse]) -> None:
        self.readiness = readiness
        self.pool_use = pool_use

    async def endpoint(self, request: Request) -> Response:
        state = await self.readiness.check()
        READY.set(state["status"] == "ready")
        checks = state.get("checks")
        if isinstance(checks, dict):
            for part, result in checks.items():
                READY_CHECKS.labels(part).set(result == "ok")
        pool = self.pool_use()
        DB_POOL.labels("in_use").set(pool.in_use)
        DB_POOL.labels("idle").set(pool.idle)
        DB_POOL_MAX.set(pool.max)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
