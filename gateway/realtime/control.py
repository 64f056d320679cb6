"""The socket layer's own frames: `ping`, and `auth` after the handshake: a fresh token
for the same holder, which keeps the socket open past the old token's expiry."""

from __future__ import annotations

from gateway.auth import AdminIdentity, Authenticator, AuthError, Identity
from gateway.realtime.router import Peer, Router
from protocol.codec import ProtocolError
from protocol.codes import ErrorCode
from protocol.frames import Ack, Auth, Ping, Pong


async def handle_ping(peer: Peer[Identity], frame: Ping) -> None:
    peer.send(Pong(ts=frame.ts))


class Reauthentication:
    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    async def handle(self, peer: Peer[Identity], frame: Auth) -> None:
        try:
            holder = await self.authenticator.verify(frame.token)
        except AuthError as exc:  # the socket keeps its current token until it expires
            peer.send_error(ProtocolError(ErrorCode.UNAUTHENTICATED, str(exc), frame.id))
            return
        if isinstance(holder, AdminIdentity) or not peer.renew(holder):
            message = "token: names another holder than this socket's"
            peer.send_error(ProtocolError(ErrorCode.FORBIDDEN, message, frame.id))
            return
        if frame.id is not None:
            peer.send(Ack(ref=frame.id))


def register(router: Router, authenticator: Authenticator) -> None:
    router.for_everyone(Ping, handle_ping)
    router.for_everyone(Auth, Reauthentication(authenticator).handle)
