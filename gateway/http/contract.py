"""What the HTTP side tells a client developer about the socket: the protocol's AsyncAPI
document (`GET /asyncapi.json`) and, for a plain `GET /v1/ws`, how to connect instead."""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.http.rest import error_response
from protocol.asyncapi import asyncapi_document


@cache
def _document() -> dict[str, Any]:
    return asyncapi_document()


async def asyncapi(request: Request) -> JSONResponse:
    """The document, its server named as the client reached this one."""
    document = copy.copy(_document())
    server = dict(document["servers"]["gateway"])
    server["host"] = request.headers.get("host") or server["host"]
    if request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https":
        server["protocol"] = "wss"
    document["servers"] = {"gateway": server}
    return JSONResponse(document)


async def upgrade_required(request: Request) -> Response:
    message = (
        "/v1/ws is a WebSocket endpoint: connect with a WebSocket client (ws:// or wss://, "
        "Authorization: Bearer <token> or an auth frame first); the protocol is described "
        "at /asyncapi.json"
    )
    return error_response(426, "upgrade_required", message, {"Upgrade": "websocket"})
