"""Uvicorn set up for the gateway, with a drain on the way out.

On SIGTERM (or SIGINT) the gateway drains before uvicorn shuts down: new sockets are
refused with 503 and `/readyz` answers 503, every socket gets a `reconnect` frame, the
gateway waits up to DRAIN_SECONDS for in-flight work, then closes sockets with 1012. A
second signal skips the wait.
"""

from __future__ import annotations

import asyncio
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from gateway.app import Services, asgi_entry
from gateway.ops.logs import quiet_peer_errors
from gateway.settings import Settings


def uvicorn_config(app: Starlette, settings: Settings, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        asgi_entry(app),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        ws="websockets-sansio",
        # The heartbeat: ping every heartbeat_s, drop a peer that has not answered by then.
        ws_ping_interval=settings.heartbeat_s,
        ws_ping_timeout=settings.heartbeat_s,
        ws_max_size=settings.max_frame_bytes,  # larger frames close with 1009
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=max(1, int(settings.drain_seconds) + 5),
    )


class GatewayServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self.app = app
        quiet_peer_errors()
        self._drain: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain is not None or not self.started:
            super().handle_exit(sig, frame)  # second signal, or nothing to drain yet
            return
        loop = asyncio.get_event_loop()
        self._drain = loop.create_task(self.drain())

    async def drain(self) -> None:
        services: Services | None = getattr(self.app.state, "services", None)
        if services is not None:
            await services.drain()
        self.should_exit = True
