"""Frame type -> handler, by the sender's role. Features register their handlers at
start-up (the composition happens in gateway/app.py); the socket layer knows none of them.

A handler gets a `Peer`: who sent the frame, and how to answer. Registering for patients
gives the handler a peer whose identity is a `PatientIdentity` (its `patient_id` is
never missing), for clinicians a `ClinicianIdentity`.

Dispatch is the one place every client frame passes on its way to a handler:
- the protocol does not let this role send the frame type (`senders`): `forbidden`;
- no feature registered a handler for the type: `unavailable`;
- handlers are registered for the type, but not for this role: `forbidden`;
- the frame names a patient (`patient_id`) the sender may not act on: `forbidden`. A
  patient acts on their own data only; what a clinician may do about a patient is
  decided by the guards features add (observation: the care team and what this socket
  observes).
Every `forbidden` is told to the denial hooks (the audit trail) before it is sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar, cast
from uuid import UUID

from gateway.auth import ClinicianIdentity, Identity, PatientIdentity
from protocol.codec import ProtocolError
from protocol.codes import ErrorCode
from protocol.frames import ClientFrame, Role, ServerFrame, frame_type

IdentityT = TypeVar("IdentityT", bound=Identity, covariant=True)
FrameT = TypeVar("FrameT", bound=ClientFrame)


class Peer(Protocol[IdentityT]):
    """What a handler may do with the socket that sent its frame."""

    @property
    def id(self) -> UUID:
        """The session's id (as in session.ready)."""

    @property
    def identity(self) -> IdentityT: ...

    def deliver(self, text: str) -> None:
        """Queue an already encoded frame (never blocks)."""

    def send(self, frame: ServerFrame) -> None:
        """Queue a frame to this socket (never blocks)."""

    def send_error(self, error: ProtocolError) -> None: ...

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run work that outlives the frame; the drain waits for it."""

    def on_close(self, cleanup: Callable[[], Awaitable[None]]) -> None:
        """Run `cleanup` when the socket ends (for state a feature keeps per socket)."""

    def renew(self, identity: Identity) -> bool:
        """A fresh token: if it names this socket's holder, the socket now lasts until its
        expiry (True); else nothing changes (False)."""

    def report_refusal(self, frame: ClientFrame, error: ProtocolError) -> None:
        """A handler refused part or all of `frame` as `forbidden` (another patient's
        thread, say): tell the denial hooks (the audit trail). Sends nothing."""


Handler = Callable[[Peer[IdentityT], FrameT], Awaitable[None]]
# Stored without the frame's own type: dispatch only calls a handler with frames of the
# model it was registered for.
_AnyHandler = Callable[[Peer[Identity], Any], Awaitable[None]]
# Whether this peer may send this frame about the patient it concerns: None, or the
# `forbidden` error to answer (with the frame's ref).
Guard = Callable[[Peer[Identity], ClientFrame], Awaitable[ProtocolError | None]]
# Told of every frame refused as forbidden, with the error sent.
DenialHook = Callable[[Peer[Identity], ClientFrame, ProtocolError], None]


class Router:
    def __init__(self) -> None:
        self._handlers: dict[str, dict[Role, _AnyHandler]] = {}
        self._guards: list[Guard] = []
        self._denial_hooks: list[DenialHook] = []

    def guard(self, guard: Guard) -> None:
        """Check every frame that reaches a handler (after the role checks)."""
        self._guards.append(guard)

    def on_denied(self, hook: DenialHook) -> None:
        self._denial_hooks.append(hook)

    def for_patients(self, model: type[FrameT], handler: Handler[PatientIdentity, FrameT]) -> None:
        self._add(model, ("patient",), cast(_AnyHandler, handler))

    def for_clinicians(
        self, model: type[FrameT], handler: Handler[ClinicianIdentity, FrameT]
    ) -> None:
        self._add(model, ("clinician",), cast(_AnyHandler, handler))

    def for_everyone(self, model: type[FrameT], handler: Handler[Identity, FrameT]) -> None:
        self._add(model, tuple(model.senders), cast(_AnyHandler, handler))

    def handled(self) -> dict[str, dict[Role, _AnyHandler]]:
        """Frame type -> role -> handler, as registered (for docs and tests)."""
        return {kind: dict(by_role) for kind, by_role in self._handlers.items()}

    def _add(self, model: type[ClientFrame], roles: tuple[Role, ...], handler: _AnyHandler) -> None:
        kind = frame_type(model)
        registered = self._handlers.get(kind, {})
        for role in sorted(roles):  # all checked before any is added
            if role not in model.senders:
                raise ValueError(f"{kind}: the protocol does not let {role}s send it")
            if role in registered:
                raise ValueError(f"{kind}: a handler for {role}s is already registered")
        self._handlers[kind] = {**registered, **dict.fromkeys(roles, handler)}

    async def dispatch(self, peer: Peer[Identity], frame: ClientFrame) -> None:
        kind, identity = frame.type, peer.identity
        role = identity.role
        ref: str | None = getattr(frame, "id", None)
        by_role = self._handlers.get(kind)
        if role not in frame.senders or (by_role is not None and role not in by_role):
            message = f"{kind} is not allowed for {role}s"
            self._deny(peer, frame, ProtocolError(ErrorCode.FORBIDDEN, message, ref))
            return
        if by_role is None:
            message = f"{kind} is not available on this gateway yet"
            peer.send_error(ProtocolError(ErrorCode.UNAVAILABLE, message, ref))
            return
        named: UUID | None = getattr(frame, "patient_id", None)
        if isinstance(identity, PatientIdentity) and named not in (None, identity.patient_id):
            message = "patient_id: not this session's patient"
            self._deny(peer, frame, ProtocolError(ErrorCode.FORBIDDEN, message, ref))
            return
        for guard in self._guards:
            refused = await guard(peer, frame)
            if refused is not None:
                self._deny(peer, frame, refused)
                return
        await by_role[role](peer, frame)

    def refused(self, peer: Peer[Identity], frame: ClientFrame, error: ProtocolError) -> None:
        """Tell the denial hooks (for refusals decided by a handler)."""
        for hook in self._denial_hooks:
            hook(peer, frame, error)

    def _deny(self, peer: Peer[Identity], frame: ClientFrame, error: ProtocolError) -> None:
        self.refused(peer, frame, error)
        peer.send_error(error)
