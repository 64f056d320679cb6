"""Prometheus metrics. Labels hold route templates, methods, statuses and roles only:
never ids, paths with ids in them, or anything a patient wrote."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
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
WS_CONNECTIONS = Gauge("websocket_connections_open", "Open WebSocket connections", ["role"])
for _role in ("patient", "clinician"):
    WS_CONNECTIONS.labels(_role)

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


# ---- realtime -------------------------------------------------------------------------

FRAMES_IN = Counter("ws_frames_in_total", "Frames received from clients", ["type"])
FRAMES_OUT = Counter("ws_frames_out_total", "Frames queued to clients", ["type"])
ERRORS_SENT = Counter("ws_errors_total", "error frames sent to clients", ["code"])
CLOSES = Counter("ws_closes_total", "WebSocket closes initiated by the gateway", ["code"])
QUEUE_FULL_CLOSES = Counter(
    "ws_queue_full_closes_total", "Sockets closed because their send queue was full"
)
FANOUT_LATENCY = Histogram(
    "fanout_delivery_seconds",
    "From publish to enqueued on a local socket",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
BROKER_PUBLISH_FAILURES = Counter(
    "broker_publish_failures_total", "Publishes the broker could not send", ["broker"]
)

# ---- sync -------------------------------------------------------------------------------

SYNC_MUTATIONS = Counter(
    "sync_mutations_total", "Pushed mutations by outcome", ["outcome"]
)  # applied, duplicate, rejected
SYNC_PULLS = Counter("sync_pulls_total", "sync.pull requests and GET /sync/ calls answered")
SYNC_PUSH_TO_DELIVERY = Histogram(
    "sync_push_to_delivery_seconds",
    "From a write (push, REST or chat) reaching the gateway to its sync.delta enqueued on a socket",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0),
)

# ---- chat -------------------------------------------------------------------------------

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CHAT_FIRST_TOKEN_UPSTREAM = Histogram(
    "chat_first_token_upstream_seconds",
    "From the request sent to the model to its first token (the model's own latency)",
    buckets=(*_LATENCY_BUCKETS, 5.0, 10.0, 30.0),
)
CHAT_FIRST_TOKEN_ADDED = Histogram(
    "chat_first_token_added_seconds",
    "Time to first token the gateway adds: from chat.send received to the first delta "
    "published, less the model's own time to first token (store, embed, retrieve, prompt)",
    buckets=_LATENCY_BUCKETS,
)
CHAT_TOKENS = Counter("chat_tokens_total", "Pieces of reply text received from the model")
CHAT_TOKEN_RATE = Histogram(
    "chat_reply_tokens_per_second",
    "Tokens per second of each reply, from its first token to its last",
    buckets=(5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
)
CHAT_REPLIES = Counter("chat_replies_total", "Replies ended, by finish reason", ["finish_reason"])
RETRIEVAL_LATENCY = Histogram(
    "retrieval_seconds",
    "Retrieval of a patient's nearest memories for a prompt",
    buckets=_LATENCY_BUCKETS,
)
UPSTREAM_ERRORS = Counter(
    "chat_upstream_errors_total",
    "Failures talking to the model or embedding server, by kind",
    ["kind"],
)  # rate_limited, server_error, client_error, timeout, connection, stream_cut, embedding
