"""`/console/`: the console's files, with headers that keep the page to its own origin
(scripts, styles and the socket from the gateway itself; no framing, no referrer)."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

STATIC = Path(__file__).parent / "static"

HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; media-src 'self' blob:; base-uri 'none'; form-action 'none'; "
        b"frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    # Revalidated on every load (ETag), so a deploy's new files are picked up at once.
    (b"cache-control", b"no-cache"),
    (b"permissions-policy", b"microphone=(self), camera=(), geolocation=()"),
]


class ConsoleFiles:
    def __init__(self) -> None:
        self.files = StaticFiles(directory=STATIC, html=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.files(scope, receive, send_with_headers)


async def to_console(request: Request) -> RedirectResponse:
    return RedirectResponse("/console/", status_code=308)


def console_routes() -> list[BaseRoute]:
    return [
        Route("/console", to_console, methods=["GET", "HEAD"]),
        Mount("/console", app=ConsoleFiles(), name="console"),
    ]
