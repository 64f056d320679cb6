"""The floor the fan-out benchmark compares the gateway with: a bare Starlette WebSocket
endpoint that relays a room's messages through redis-py pub/sub and does nothing else —
no authentication (the token's payload is read for its patient id, not verified), no
protocol, no database, no metrics. What any Python relay on this stack costs at least.

Served by uvicorn with the gateway's WebSocket settings, one Redis subscription per room
per process, each message handed to the room's sockets one `send_text` after another:
the straightforward way to write it. It reads the gateway's broker envelope only to take
the frame's JSON out of it, so one publisher feeds both.

    python -m bench.floor PORT REDIS_URL     (bench/fanout.py starts it)
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import sys
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as redis
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

_HEADER = struct.Struct(">ddQQB")  # the gateway's envelope (gateway/realtime/hub.py)


def room_of(token: str) -> str:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return f"patient:{claims['patient_id']}"


def frame_text(message: bytes) -> str:
    *_, kind_length = _HEADER.unpack_from(message)
    return message[_HEADER.size + kind_length :].decode()


class Relay:
    def __init__(self, url: str) -> None:
        self.client = redis.from_url(url)
        self.pubsub = self.client.pubsub()
        self.rooms: dict[str, set[WebSocket]] = {}
        self.reader: asyncio.Task[None] | None = None

    async def join(self, room: str, ws: WebSocket) -> None:
        if room not in self.rooms:
            self.rooms[room] = set()
            await self.pubsub.subscribe(room)
            if self.reader is None:
                self.reader = asyncio.create_task(self.read())
        self.rooms[room].add(ws)

    async def leave(self, room: str, ws: WebSocket) -> None:
        members = self.rooms.get(room)
        if members is not None:
            members.discard(ws)
            if not members:
                del self.rooms[room]
                await self.pubsub.unsubscribe(room)

    async def read(self) -> None:
        async for message in self.pubsub.listen():
            if message["type"] != "message":
                continue
            text = frame_text(message["data"])
            for ws in tuple(self.rooms.get(message["channel"].decode(), ())):
                try:
                    await ws.send_text(text)
                except Exception:
                    pass  # its own endpoint notices the close


def make_app(redis_url: str) -> Starlette:
    relay = Relay(redis_url)

    async def socket(ws: WebSocket) -> None:
        header = ws.headers.get("authorization", "")
        room = room_of(header.removeprefix("Bearer ").strip())
        await ws.accept()
        await relay.join(room, ws)
        try:
            while True:
                await ws.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            await relay.leave(room, ws)

    async def ready(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ready")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        yield
        if relay.reader is not None:
            relay.reader.cancel()
        await relay.client.aclose()

    return Starlette(
        routes=[WebSocketRoute("/v1/ws", socket), Route("/readyz", ready)], lifespan=lifespan
    )


def main() -> None:
    port, redis_url = int(sys.argv[1]), sys.argv[2]
    uvicorn.run(
        make_app(redis_url),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
    )


if __name__ == "__main__":
    main()
