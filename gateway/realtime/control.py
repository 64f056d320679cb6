"""The socket layer's own frames: `ping`, and `auth` sent again after the handshake."""

from __future__ import annotations

from gateway.auth import Identity
from gateway.realtime.router import Peer, Router
from protocol.codec import ProtocolError
from protocol.codes import ErrorCode
from protocol.frames import Auth, Ping, Pong


async def handle_ping(peer: Peer[Identity], frame: Ping) -> None:
    peer.send(Pong(ts=frame.ts))


async def handle_auth(peer: Peer[Identity], frame: Auth) -> None:
    # A socket's identity is fixed at the handshake (gateway/realtime/endpoint.py).
    error = ProtocolError(ErrorCode.INVALID, "type: auth is accepted only as the first frame")
    peer.send_error(error)


def register(router: Router) -> None:
    router.for_everyone(Ping, handle_ping)
    router.for_everyone(Auth, handle_auth)
