"""Frame type -> handler. Services register their handlers here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from gateway.chat import handle_cancel, handle_send
from gateway.sync import handle_pull, handle_push
from protocol.frames import ClientFrame, Ping, Pong

if TYPE_CHECKING:
    from gateway.session import Session

Handler = Callable[["Session", ClientFrame], Awaitable[None]]


async def handle_ping(session: Session, frame: ClientFrame) -> None:
    assert isinstance(frame, Ping)
    session.send(Pong(ts=frame.ts))


HANDLERS: dict[str, Handler] = {
    "ping": handle_ping,
    "chat.send": handle_send,
    "chat.cancel": handle_cancel,
    "sync.push": handle_push,
    "sync.pull": handle_pull,
}
