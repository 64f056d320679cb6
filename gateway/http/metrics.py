"""HTTP metrics and the `/metrics` endpoint. Labels hold route templates, methods and
statuses only: never ids, paths with ids in them, or anything a patient wrote."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HTTP_REQUESTS = Counter(
    "http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time to answer an HTTP request, until the response starts",
    ["method", "route", "status"],
)

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


async def metrics_endpoint(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
