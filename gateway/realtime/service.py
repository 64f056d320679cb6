"""The socket layer's state: its settings, the parts every socket uses, the open sockets,
and the drain.

Features reach sockets only through the router (gateway/realtime/router.py) and the hub;
what the socket layer needs from a feature comes in as a plain function
(`sync_version`, `ready_state`), so nothing here imports one.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

from gateway.auth import Authenticator, Identity, RevokedSubjects
from gateway.ratelimit import KeyedBuckets
from gateway.realtime.hub import Hub
from gateway.realtime.outbox import Flusher
from gateway.realtime.presence import PresenceService
from gateway.realtime.router import Router
from gateway.settings import Settings
from protocol.codec import ProtocolError
from protocol.codes import CloseCode, ErrorCode
from protocol.frames import ChatResume, Limits, Providers, Reconnect, ServerFrame

log = logging.getLogger(__name__)

RECONNECT_JITTER_MS = 2000  # spread reconnects so they do not all land at once

# A patient's latest sync version (for session.ready, and after a broker outage).
VersionLookup = Callable[[UUID], Awaitable[int]]
# What `session.ready` needs of a patient: their latest sync version and their replies
# streaming now as `chat.resume`s (on any process; chat's), read in one round trip.
ReadyLookup = Callable[[UUID], Awaitable[tuple[int, Sequence[ChatResume]]]]


@dataclass(frozen=True)
class RealtimeConfig:
    heartbeat_s: float
    auth_timeout_s: float
    allowed_origins: tuple[str, ...]
    burst: int
    send_queue_frames: int
    send_queue_bytes: int
    max_sockets_per_patient: int
    patient_frames_per_s: float
    patient_burst: int
    limits: Limits  # advertised in session.ready

    @classmethod
    def from_settings(cls, settings: Settings) -> RealtimeConfig:
        return cls(
            heartbeat_s=settings.heartbeat_s,
            auth_timeout_s=settings.auth_timeout_s,
            allowed_origins=tuple(settings.allowed_origins),
            burst=settings.burst,
            send_queue_frames=settings.send_queue_frames,
            send_queue_bytes=settings.send_queue_bytes,
            max_sockets_per_patient=settings.max_sockets_per_patient,
            patient_frames_per_s=settings.patient_frames_per_s,
            patient_burst=settings.patient_burst,
            limits=Limits(
                max_frame_bytes=settings.max_frame_bytes,
                max_audio_bytes=settings.max_audio_bytes,
                frames_per_s=settings.frames_per_s,
                burst=settings.burst,
            ),
        )


class OpenSocket(Protocol):
    """What the drain and revocations need of a socket."""

    @property
    def identity(self) -> Identity: ...

    @property
    def tasks(self) -> set[asyncio.Task[None]]:
        """Work started by the socket's frames that is still running."""

    def send(self, frame: ServerFrame) -> None: ...

    def send_error(self, error: ProtocolError) -> None: ...

    def close(self, code: int, reason: str = "") -> None: ...


class RealtimeService:
    def __init__(
        self,
        config: RealtimeConfig,
        *,
        hub: Hub,
        presence: PresenceService,
        authenticator: Authenticator,
        router: Router,
        providers: Providers,
        sync_version: VersionLookup,
        ready_state: ReadyLookup,
    ) -> None:
        self.config = config
        self.hub = hub
        self.presence = presence
        self.authenticator = authenticator
        self.router = router
        self.providers = providers
        self.sync_version = sync_version
        self.ready_state = ready_state
        self.flusher = Flusher()
        self.sockets: set[OpenSocket] = set()
        self.draining = False
        # Shared by all of a patient's sockets on this process.
        self.patient_frames = KeyedBuckets(config.patient_frames_per_s, config.patient_burst)

    def close_revoked(self, sub: UUID, revoked: RevokedSubjects) -> None:
        """Close the sockets whose tokens `revoked` now voids (4401)."""
        for socket in tuple(self.sockets):
            identity = socket.identity
            if identity.sub == sub and revoked.voids(sub, identity.issued_at):
                message = "token revoked: get a new token"
                socket.send_error(ProtocolError(ErrorCode.UNAUTHENTICATED, message))
                socket.close(CloseCode.UNAUTHENTICATED, "token revoked")

    async def drain(self, seconds: float, in_flight: Iterable[asyncio.Task[None]] = ()) -> None:
        """Refuse new sockets, tell every open one to reconnect (with jitter), wait up to
        `seconds` for their work and `in_flight` (work that outlives sockets), then close
        them with 1012."""
        self.draining = True
        sockets = tuple(self.sockets)
        log.info("draining %d socket(s)", len(sockets))
        for socket in sockets:
            socket.send(
                Reconnect(reason="server_restart", after_ms=random.randrange(RECONNECT_JITTER_MS))
            )
        pending = [task for socket in sockets for task in socket.tasks]
        pending += in_flight
        if pending:
            await asyncio.wait(pending, timeout=seconds)
        for socket in sockets:
            socket.close(CloseCode.SERVICE_RESTART, "server restart")
