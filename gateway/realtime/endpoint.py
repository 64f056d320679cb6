"""`GET /v1/ws`: the upgrade, the origin check and authentication, then the session.

Authentication failures are answered on the socket (browsers cannot read the status of a
refused upgrade): accept, send an `unauthenticated` error, close with 4401. An admin token
is valid but not for sockets: `forbidden`, close with 4403.
"""

from __future__ import annotations

import asyncio

import orjson
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from gateway import tracing
from gateway.auth import AdminIdentity, AuthError, Principal
from gateway.realtime.metrics import CLOSES, ERRORS_SENT
from gateway.realtime.outbox import Send
from gateway.realtime.service import RealtimeService
from gateway.realtime.session import Session
from protocol.codec import ProtocolError, encode
from protocol.codes import CloseCode, ErrorCode

SUBPROTOCOL = "painar.v1"
WS_PATH = "/v1/ws"


async def websocket_endpoint(realtime: RealtimeService, ws: WebSocket, send: Send) -> None:
    """`send` is the server's own ASGI send: the session writes frames through it."""
    if realtime.draining:
        body = {"error": "draining: reconnect to another gateway process"}
        await ws.send_denial_response(JSONResponse(body, status_code=503))
        return
    origin = ws.headers.get("origin")
    allowed = realtime.config.allowed_origins
    if allowed and origin is not None and origin not in allowed:
        await ws.send_denial_response(JSONResponse({"error": "origin not allowed"}, 403))
        return
    offered = ws.scope.get("subprotocols") or []
    await ws.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    # Ended by the session once session.ready is out (its frames are traces of their own).
    connect = tracing.begin("ws.connect")
    try:
        with tracing.span("ws.auth", connect):
            identity = await _authenticate(ws, realtime)
    except AuthError as exc:
        connect.end(outcome="unauthenticated")
        await _refuse(ws, str(exc))
        return
    if identity is None:
        connect.end(outcome="left")
        return  # the client left before authenticating
    if isinstance(identity, AdminIdentity):
        connect.end(outcome="forbidden")
        await _refuse(
            ws,
            "admin tokens are for the admin HTTP API, not sockets",
            ErrorCode.FORBIDDEN,
            CloseCode.FORBIDDEN,
        )
        return
    connect.set(role=identity.role)
    await Session(ws, send, identity, realtime, connect).run()


async def _authenticate(ws: WebSocket, realtime: RealtimeService) -> Principal | None:
    header = ws.headers.get("authorization")
    if header is not None:
        scheme, _, bearer = header.partition(" ")
        if scheme.lower() != "bearer" or not bearer.strip():
            raise AuthError("Authorization header must be 'Bearer <token>'")
        return await realtime.authenticator.verify(bearer.strip())
    try:
        async with asyncio.timeout(realtime.config.auth_timeout_s):
            message = await ws.receive()
    except TimeoutError:
        raise AuthError("no auth frame within the time allowed") from None
    if message["type"] == "websocket.disconnect":
        return None
    text = message.get("text")
    try:
        frame = orjson.loads(text) if text is not None else None
    except orjson.JSONDecodeError:
        frame = None
    if not isinstance(frame, dict) or frame.get("type") != "auth":
        raise AuthError("the first frame must be an auth frame (or send an Authorization header)")
    token: object = frame.get("token")
    if not isinstance(token, str) or not token:
        raise AuthError("token: a non-empty string is required")
    return await realtime.authenticator.verify(token)


async def _refuse(
    ws: WebSocket,
    message: str,
    code: ErrorCode = ErrorCode.UNAUTHENTICATED,
    close: CloseCode = CloseCode.UNAUTHENTICATED,
) -> None:
    ERRORS_SENT.labels(code.value).inc()
    CLOSES.labels(str(close.value)).inc()
    await ws.send_text(encode(ProtocolError(code, message).frame()).decode())
    await ws.close(close, code.value)
