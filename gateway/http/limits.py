"""Limits on HTTP requests: a rate per bearer token (REST_REQUESTS_PER_S, REST_BURST;
429 past it, decided before the token is even verified, so refusing costs little) and a
size limit on bodies (MAX_BODY_BYTES): larger ones are answered 413 before the route reads
them (by Content-Length), or as soon as a chunked body passes it."""

from __future__ import annotations

import asyncio

import orjson
from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.http.rest import error_response
from gateway.ratelimit import KeyedBuckets

HTTP_RATE_LIMITED = Counter(
    "http_rate_limited_total", "HTTP requests refused (429) by the per-token rate limit"
)


# A refused request is answered after this long (its Retry-After), so a client that
# retries as soon as it is told no cannot keep the gateway busy refusing it; at most
# MAX_DELAYED such answers wait at once (beyond that they go out at once: waiting costs a
# connection each).
REFUSAL_DELAY_S = 1.0
MAX_DELAYED = 100


class RestRateLimit:
    """Requests that carry `Authorization` draw from that token's bucket; health, metrics
    and other unauthenticated routes are not limited here. Checked by the server's entry
    point before any middleware or routing runs, and answered with a body encoded once:
    a flood of refused requests costs little more than parsing them."""

    def __init__(self, per_s: float, burst: int) -> None:
        self.budgets = KeyedBuckets(per_s, burst)
        self._delayed = 0
        body = orjson.dumps(
            {"error": {"code": "rate_limited", "message": "too many requests with this token"}}
        )
        self._start: Message = {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"1"),
            ],
        }
        self._body: Message = {"type": "http.response.body", "body": body}

    def admits(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                return self.budgets.take(value)
        return True

    async def refuse(self, send: Send) -> None:
        HTTP_RATE_LIMITED.inc()
        if self._delayed < MAX_DELAYED:
            self._delayed += 1
            try:
                await asyncio.sleep(REFUSAL_DELAY_S)
            finally:
                self._delayed -= 1
        await send(self._start)
        await send(self._body)


class BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"body: larger than the {self.max_bytes} bytes allowed"
        await error_response(413, "too_large", message)(scope, receive, send)
