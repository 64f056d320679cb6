"""One WebSocket session: receive loop, send queue, limits, and the one place where
failures become close codes.

The receive loop decodes each frame, checks it against the rate limit and the sender's
role, and hands it to its handler. Everything sent goes through the socket's outbox
(gateway/outbox.py), so a slow socket never blocks a publisher or another socket: when
its bounded queue is full it is closed with 1013 and its client resumes from its last
sync version.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Coroutine
from typing import Any
from uuid import UUID

from starlette.websockets import WebSocket

from gateway.auth import Identity
from gateway.handlers import HANDLERS
from gateway.hub import patient_topic
from gateway.metrics import ERRORS_SENT, FRAMES_IN, FRAMES_OUT, WS_CONNECTIONS
from gateway.outbox import Outbox, Send
from gateway.presence import device_member
from gateway.ratelimit import TokenBucket
from gateway.runtime import Runtime
from protocol.codec import ProtocolError, decode_audio_frame, decode_client_frame, encode
from protocol.codes import CloseCode, ErrorCode
from protocol.frames import (
    CLINICIAN_ONLY,
    PATIENT_ONLY,
    ClientFrame,
    ServerFrame,
    SessionReady,
    SyncVersion,
)
from storage.changes import current_version

log = logging.getLogger(__name__)

MAX_BAD_FRAMES = 10  # consecutive undecodable frames before 1008
CLOSE_FLUSH_S = 5.0  # how long a close may wait for queued frames to go out


class Session:
    def __init__(self, ws: WebSocket, send: Send, identity: Identity, runtime: Runtime) -> None:
        self.id = uuid.uuid4()
        self.ws = ws
        self.identity = identity
        self.runtime = runtime
        self.topic = patient_topic(identity.patient_id) if identity.patient_id else None
        settings = runtime.settings
        self.outbox = Outbox(
            send,
            runtime.flusher,
            max_frames=settings.send_queue_frames,
            max_bytes=settings.send_queue_bytes,
            on_overflow=lambda: self.close(CloseCode.TRY_AGAIN_LATER, "slow consumer"),
        )
        self._bucket = TokenBucket(settings.frames_per_s, settings.burst)
        # How long a close may take before the peer counts as gone (it stopped reading).
        self._close_timeout = min(CLOSE_FLUSH_S, 2 * settings.heartbeat_s)
        self._task: asyncio.Task[None] | None = None
        self._receiving = False
        self._gave_up = False
        self._give_up_timer: asyncio.TimerHandle | None = None
        self._limited_in_a_row = 0
        self._bad_in_a_row = 0
        self.tasks: set[asyncio.Task[None]] = set()  # work that outlives its frame

    # ---- sending ----------------------------------------------------------------------

    def deliver(self, text: str) -> None:
        """Send one encoded frame (the hub calls this for every fan-out)."""
        self.outbox.put(text)

    def send(self, frame: ServerFrame) -> None:
        FRAMES_OUT.labels(frame.type).inc()
        self.outbox.put(encode(frame).decode())

    def send_error(self, error: ProtocolError) -> None:
        ERRORS_SENT.labels(error.code.value).inc()
        self.send(error.frame())

    def close(self, code: int, reason: str = "") -> None:
        """Close after what is already queued has gone out (the first close wins)."""
        self.outbox.close(code, reason)
        if self._give_up_timer is None:
            loop = asyncio.get_running_loop()
            self._give_up_timer = loop.call_later(self._close_timeout, self._give_up)

    def _give_up(self) -> None:
        """The close did not complete: a peer that neither reads nor answers would keep
        the receive loop waiting forever, so stop it."""
        if self._receiving and self._task is not None and not self._task.done():
            self._gave_up = True
            self._task.cancel()

    @property
    def closing(self) -> bool:
        return self.outbox.closing

    # ---- the hub's listener interface ------------------------------------------------

    def broker_recovered(self) -> None:
        if self.identity.patient_id is not None:
            self.spawn(self._send_sync_version())

    async def _send_sync_version(self) -> None:
        assert self.identity.patient_id is not None
        version = await self._sync_version(self.identity.patient_id)
        self.send(SyncVersion(patient_id=self.identity.patient_id, version=version))

    async def _sync_version(self, patient_id: UUID) -> int:
        async with self.runtime.pool.acquire() as conn:
            return await current_version(conn, patient_id)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run work that outlives its frame; the drain waits for it."""
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ---- receiving --------------------------------------------------------------------

    async def run(self) -> None:
        runtime, identity = self.runtime, self.identity
        runtime.sessions.add(self)
        WS_CONNECTIONS.labels(identity.role).inc()
        self._task = asyncio.current_task()
        try:
            await self._ready()
            if self.topic is not None and identity.patient_id is not None:
                await runtime.hub.join(self.topic, self)
                member = device_member(self.id, identity.device_id)
                await runtime.presence.joined(identity.patient_id, member)
            self._receiving = True
            await self._receive_loop()
        except asyncio.CancelledError:
            if not self._gave_up:
                raise
            assert self._task is not None
            self._task.uncancel()
        except Exception as exc:
            # The one place where an unexpected failure becomes a close code.
            log.error("session failed: %s", type(exc).__name__, exc_info=exc)
            self.send_error(ProtocolError(ErrorCode.INTERNAL, "internal error", retryable=True))
            self.close(CloseCode.INTERNAL, "internal error")
        finally:
            self._receiving = False
            if self.topic is not None and identity.patient_id is not None:
                await runtime.presence.left(identity.patient_id, str(self.id))
                await runtime.hub.leave(self.topic, self)
            runtime.sessions.discard(self)
            WS_CONNECTIONS.labels(identity.role).dec()
            await self._finish()
            if self._give_up_timer is not None:
                self._give_up_timer.cancel()

    async def _ready(self) -> None:
        identity, runtime = self.identity, self.runtime
        sync_version = None
        if identity.patient_id is not None:
            sync_version = await self._sync_version(identity.patient_id)
        self.send(
            SessionReady(
                session_id=self.id,
                role=identity.role,
                patient_id=identity.patient_id,
                device_id=identity.device_id,
                sync_version=sync_version,
                heartbeat_s=runtime.settings.heartbeat_s,
                limits=runtime.limits,
                providers=runtime.providers,
            )
        )

    async def _finish(self) -> None:
        self.close(CloseCode.NORMAL)
        try:
            async with asyncio.timeout(self._close_timeout):
                await self.outbox.wait_closed()
        except TimeoutError:
            # The peer is not reading; the heartbeat drops the transport.
            self.outbox.abandon()

    async def _receive_loop(self) -> None:
        while not self.closing:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            text, data = message.get("text"), message.get("bytes")
            if not self._bucket.take():
                self._rate_limited()
                continue
            self._limited_in_a_row = 0
            decoded = (
                decode_client_frame(text) if text is not None else decode_audio_frame(data or b"")
            )
            if isinstance(decoded, ProtocolError):
                self._bad_frame(decoded)
                continue
            self._bad_in_a_row = 0
            await self._dispatch(decoded)

    def _rate_limited(self) -> None:
        self._limited_in_a_row += 1
        if self._limited_in_a_row > self.runtime.settings.burst:
            self.close(CloseCode.POLICY, "rate limit exceeded")
            return
        self.send_error(
            ProtocolError(ErrorCode.RATE_LIMITED, "too many frames; slow down", retryable=True)
        )

    def _bad_frame(self, error: ProtocolError) -> None:
        FRAMES_IN.labels("invalid").inc()
        self._bad_in_a_row += 1
        self.send_error(error)
        if self._bad_in_a_row >= MAX_BAD_FRAMES:
            self.close(CloseCode.POLICY, "too many bad frames")

    async def _dispatch(self, frame: ClientFrame) -> None:
        kind: str = frame.type
        ref: str | None = getattr(frame, "id", None)
        FRAMES_IN.labels(kind).inc()
        role = self.identity.role
        if kind == "auth":
            error = ProtocolError(
                ErrorCode.INVALID, "type: auth is accepted only as the first frame", ref
            )
            self.send_error(error)
            return
        if (kind in PATIENT_ONLY and role != "patient") or (
            kind in CLINICIAN_ONLY and role != "clinician"
        ):
            self.send_error(
                ProtocolError(ErrorCode.FORBIDDEN, f"{kind} is not allowed for {role}s", ref)
            )
            return
        handler = HANDLERS.get(kind)
        if handler is None:
            self.send_error(
                ProtocolError(
                    ErrorCode.UNAVAILABLE, f"{kind} is not available on this gateway yet", ref
                )
            )
            return
        try:
            await handler(self, frame)
        except Exception as exc:
            log.error("handler for %s failed: %s", kind, type(exc).__name__, exc_info=exc)
            self.send_error(
                ProtocolError(ErrorCode.INTERNAL, "internal error", ref, retryable=True)
            )
