"""One WebSocket session: receive loop, send queue, limits, and the one place where
failures become close codes.

The receive loop decodes each frame, checks it against the rate limit and the sender's
role, and hands it to the router. Everything sent goes through the socket's outbox
(gateway/realtime/outbox.py), so a slow socket never blocks a publisher or another socket: when
its bounded queue is full it is closed with 1013 and its client resumes from its last
sync version.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any
from uuid import UUID

from starlette.websockets import WebSocket

from gateway import tracing
from gateway.auth import Identity, PatientIdentity, same_holder
from gateway.ratelimit import TokenBucket
from gateway.realtime.admission import Admission
from gateway.realtime.catchup import not_resumed
from gateway.realtime.hub import patient_topic
from gateway.realtime.lifetime import TokenExpiry
from gateway.realtime.metrics import ERRORS_SENT, FRAMES_IN, FRAMES_OUT, WS_CONNECTIONS
from gateway.realtime.outbox import Outbox, Send
from gateway.realtime.presence import device_member
from gateway.realtime.service import RealtimeService
from protocol.codec import ProtocolError, decode_audio_frame, decode_client_frame, encode
from protocol.codes import CloseCode, ErrorCode
from protocol.frames import ChatResume, ClientFrame, ServerFrame, SessionReady, SyncVersion
from storage.database import DatabaseUnavailable, PoolExhausted

log = logging.getLogger(__name__)

MAX_BAD_FRAMES = 10  # frames in a row refused before any handler (bad_frame, unknown_type, invalid)
CLOSE_FLUSH_S = 5.0  # how long a close may wait for queued frames to go out


class Session:
    """One socket; the `Peer` that handlers answer through."""

    def __init__(
        self,
        ws: WebSocket,
        send: Send,
        identity: Identity,
        realtime: RealtimeService,
        connect: tracing.Span = tracing.OFF,
    ) -> None:
        self._id = uuid.uuid4()
        self._connect = connect  # the connect's span, ended once session.ready is out
        self.ws = ws
        # A patient's socket always has a device id: its idempotency keys are the device's.
        # A token without one gets this socket's own (session.ready says so).
        self._token_identity = identity
        self._assigned_device: str | None = None
        if isinstance(identity, PatientIdentity) and identity.device_id is None:
            self._assigned_device = f"socket-{self._id}"
            identity = replace(identity, device_id=self._assigned_device)
        self._identity = identity
        self.realtime = realtime
        # A patient's devices listen on the patient's topic.
        self.patient = identity if isinstance(identity, PatientIdentity) else None
        self.topic = patient_topic(self.patient.patient_id) if self.patient else None
        config = realtime.config
        self.outbox = Outbox(
            send,
            realtime.flusher,
            max_frames=config.send_queue_frames,
            max_bytes=config.send_queue_bytes,
            on_overflow=lambda: self.close(CloseCode.TRY_AGAIN_LATER, "slow consumer"),
        )
        self._admission = Admission(
            TokenBucket(config.limits.frames_per_s, config.burst),
            realtime.patient_frames,
            self.patient.patient_id if self.patient else None,
        )
        # How long a close may take before the peer counts as gone (it stopped reading).
        self._close_timeout = min(CLOSE_FLUSH_S, 2 * config.heartbeat_s)
        self._task: asyncio.Task[None] | None = None
        self._held: list[str] | None = None  # live frames, while a new socket catches up
        self._receiving = False
        self._gave_up = False
        self._give_up_timer: asyncio.TimerHandle | None = None
        self._bad_in_a_row = 0
        self._tasks: set[asyncio.Task[None]] = set()  # work that outlives its frame
        self._cleanups: list[Callable[[], Awaitable[None]]] = []
        self._expiry = TokenExpiry(self._expired)

    @property
    def id(self) -> UUID:
        return self._id

    @property
    def identity(self) -> Identity:
        return self._identity

    @property
    def tasks(self) -> set[asyncio.Task[None]]:
        return self._tasks

    # ---- sending ----------------------------------------------------------------------

    def deliver(self, text: str) -> None:
        """Send one encoded frame (the hub calls this for every fan-out)."""
        if self._held is not None:
            self._held.append(text)  # caught up first (see _ready)
            return
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
        if self.patient is not None:
            self.spawn(self._send_sync_version(self.patient.patient_id))

    async def _send_sync_version(self, patient_id: UUID) -> None:
        version = await self.realtime.sync_version(patient_id)
        self.send(SyncVersion(patient_id=patient_id, version=version))

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run work that outlives its frame; the drain waits for it."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_close(self, cleanup: Callable[[], Awaitable[None]]) -> None:
        self._cleanups.append(cleanup)

    def report_refusal(self, frame: ClientFrame, error: ProtocolError) -> None:
        self.realtime.router.refused(self, frame, error)

    def renew(self, identity: Identity) -> bool:
        if not same_holder(identity, self._token_identity):
            return False
        self._token_identity = identity
        if self._assigned_device is not None:
            identity = replace(identity, device_id=self._assigned_device)
        self._identity = identity
        self._expiry.set(identity.expires_at)
        return True

    def _expired(self) -> None:
        message = "token expired: send a fresh auth frame before exp to stay connected"
        self.send_error(ProtocolError(ErrorCode.UNAUTHENTICATED, message))
        self.close(CloseCode.UNAUTHENTICATED, "token expired")

    async def _clean_up(self) -> None:
        for cleanup in self._cleanups:
            try:
                await cleanup()
            except Exception as exc:  # one feature's failure must not keep others' state
                log.error("socket clean-up failed: %s", type(exc).__name__, exc_info=exc)

    # ---- receiving --------------------------------------------------------------------

    async def run(self) -> None:
        realtime, identity, patient = self.realtime, self.identity, self.patient
        realtime.sockets.add(self)
        WS_CONNECTIONS.labels(identity.role).inc()
        self._task = asyncio.current_task()
        self._expiry.set(identity.expires_at)
        try:
            if self.topic is not None and patient is not None:
                # Listening (held) before the sync version and the replies in flight are
                # read: nothing published after them is missed.
                self._held = []
                await realtime.hub.join(self.topic, self)
            with tracing.span("ws.ready", self._connect):
                await self._ready()
                if patient is not None:
                    member = device_member(self.id, identity.device_id)
                    devices = await realtime.presence.joined(patient.patient_id, member)
                    if devices > realtime.config.max_sockets_per_patient:
                        self._over_the_socket_cap()
            self._connect.end(outcome="ready")
            self._receiving = True
            await self._receive_loop()
        except asyncio.CancelledError:
            if not self._gave_up:
                raise
            assert self._task is not None
            self._task.uncancel()
        except (DatabaseUnavailable, PoolExhausted) as exc:
            # session.ready needs the sync version: down, or a storm of connects past
            # what the pool serves in time.
            self.send_error(_database_error(exc, "reconnect shortly"))
            busy = isinstance(exc, PoolExhausted)
            self.close(
                CloseCode.TRY_AGAIN_LATER, "database busy" if busy else "database unreachable"
            )
        except Exception as exc:
            # The one place where an unexpected failure becomes a close code.
            log.error("session failed: %s", type(exc).__name__, exc_info=exc)
            self.send_error(ProtocolError(ErrorCode.INTERNAL, "internal error", retryable=True))
            self.close(CloseCode.INTERNAL, "internal error")
        finally:
            self._connect.end(outcome="closed")  # before session.ready was out
            self._receiving = False
            await self._clean_up()
            if self.topic is not None and patient is not None:
                await realtime.presence.left(patient.patient_id, str(self.id))
                await realtime.hub.leave(self.topic, self)
            realtime.sockets.discard(self)
            WS_CONNECTIONS.labels(identity.role).dec()
            await self._finish()
            if self._give_up_timer is not None:
                self._give_up_timer.cancel()
            self._expiry.cancel()

    async def _ready(self) -> None:
        """`session.ready`; for a patient's socket then one `chat.resume` per reply of the
        patient streaming now (on any process), then the live frames held meanwhile, less
        the deltas the resumes hold: each reply's text once, without a gap."""
        realtime, patient = self.realtime, self.patient
        sync_version = None
        resumes: Sequence[ChatResume] = ()
        if patient is not None:
            sync_version, resumes = await realtime.ready_state(patient.patient_id)
        self.send(
            SessionReady(
                session_id=self.id,
                role=self.identity.role,
                patient_id=patient.patient_id if patient is not None else None,
                device_id=self.identity.device_id,
                device_id_assigned=True if self._assigned_device else None,
                sync_version=sync_version,
                heartbeat_s=realtime.config.heartbeat_s,
                limits=realtime.config.limits,
                providers=realtime.providers,
            )
        )
        held, self._held = self._held or [], None
        for resume in resumes:
            self.send(resume)
        for text in not_resumed(held, resumes):
            self.outbox.put(text)

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
            # A frame already received returns without suspending: a socket with a backlog
            # of frames would hold the event loop until it is through. Yielding once per
            # frame lets every other socket (and patient) take turns.
            await asyncio.sleep(0)
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            text, data = message.get("text"), message.get("bytes")
            refusal = self._admission.before_decoding()
            if refusal is not None:
                self._rate_limited(refusal)
                continue
            decoded = (
                decode_client_frame(text) if text is not None else decode_audio_frame(data or b"")
            )
            if isinstance(decoded, ProtocolError):
                self._bad_frame(decoded)
                continue
            refusal = self._admission.after_decoding(decoded.type)
            if refusal is not None:
                # Read by now: the write's id tells the client which request to resend.
                self._rate_limited(refusal, getattr(decoded, "id", None))
                continue
            self._bad_in_a_row = 0
            await self._dispatch(decoded)

    def _over_the_socket_cap(self) -> None:
        """This socket made one too many for its patient (counted on every process)."""
        cap = self.realtime.config.max_sockets_per_patient
        message = f"this patient has {cap} sockets open already (MAX_SOCKETS_PER_PATIENT)"
        self.send_error(ProtocolError(ErrorCode.RATE_LIMITED, message))
        self.close(CloseCode.POLICY, "too many sockets for this patient")

    def _rate_limited(self, message: str, ref: str | None = None) -> None:
        if self._admission.refused():
            self.close(CloseCode.POLICY, "rate limit exceeded")
            return
        self.send_error(ProtocolError(ErrorCode.RATE_LIMITED, message, ref, retryable=True))

    def _bad_frame(self, error: ProtocolError) -> None:
        FRAMES_IN.labels("invalid").inc()
        self._bad_in_a_row += 1
        self.send_error(error)
        if self._bad_in_a_row >= MAX_BAD_FRAMES:
            self.close(CloseCode.POLICY, "too many bad frames")

    async def _dispatch(self, frame: ClientFrame) -> None:
        FRAMES_IN.labels(frame.type).inc()
        ref: str | None = getattr(frame, "id", None)
        try:
            await self.realtime.router.dispatch(self, frame)
        except PoolExhausted as exc:
            self.send_error(_database_error(exc, "retry shortly", ref))
        except DatabaseUnavailable as exc:
            self.send_error(_database_error(exc, "nothing was stored, retry shortly", ref))
        except Exception as exc:
            log.error("handler for %s failed: %s", frame.type, type(exc).__name__, exc_info=exc)
            self.send_error(
                ProtocolError(ErrorCode.INTERNAL, "internal error", ref, retryable=True)
            )


def _database_error(
    exc: DatabaseUnavailable | PoolExhausted, then: str, ref: str | None = None
) -> ProtocolError:
    """What a client is told when the database cannot serve it: busy or unreachable,
    and what to do (`then`)."""
    if isinstance(exc, PoolExhausted):
        return ProtocolError(ErrorCode.BUSY, f"the database is busy; {then}", ref, retryable=True)
    message = f"the database is unreachable; {then}"
    return ProtocolError(ErrorCode.UNAVAILABLE, message, ref, retryable=True)
