"""Clinicians observing patients, read-only.

`observe` (from a clinician on the patient's care team, checked by `guard` before the
handler runs) subscribes the socket to the patient's topic, buffering what arrives while
it answers `ack`, `observe.snapshot` and one `chat.resume` per reply in flight; then the
buffer goes out without what the snapshot and resumes already hold, and the patient's
frames flow live. Every live observation is checked against the care team every
OBSERVE_RECHECK_S on every process: a revoked or expired grant ends it with a `forbidden`
error naming the patient. Observers can write nothing: the protocol gives clinicians no
writing frame, and the router refuses them (and audits the attempt) before any handler.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast
from uuid import UUID

from gateway.auth import ClinicianIdentity, Identity, PatientIdentity, Principal
from gateway.observe.audit import AuditLog
from gateway.observe.config import ObserveConfig
from gateway.observe.metrics import OBSERVATIONS, OBSERVE_DENIALS
from gateway.observe.observation import Observation, VersionOf
from gateway.realtime.hub import Hub, patient_topic
from gateway.realtime.presence import PresenceService
from gateway.realtime.presence_stores import Member
from gateway.realtime.router import Peer
from protocol.codec import ProtocolError
from protocol.codes import ErrorCode
from protocol.frames import (
    Ack,
    ChatResume,
    ClientFrame,
    Observe,
    ObserveSnapshot,
    SyncChanges,
    SyncPull,
    Unobserve,
)
from storage.audit import AuditEvent, Outcome
from storage.care_team import in_force
from storage.database import Database
from storage.snapshots import snapshot

log = logging.getLogger(__name__)

MAX_OBSERVED = 50  # patients one socket may observe at once
NOT_ON_TEAM = "patient_id: not on this patient's care team"
NOT_OBSERVING = "patient_id: not observing this patient"
DEFAULT_PULL_LIMIT = 500
# The patient's data after a version, as sync.pull answers it: (version, changes, more).
Pull = Callable[[UUID, int, int], Awaitable[tuple[int, list[Any], bool]]]
AskResumes = Callable[[UUID], Awaitable[list[ChatResume]]]


class ObserveService:
    def __init__(
        self,
        config: ObserveConfig,
        *,
        db: Database,
        hub: Hub,
        presence: PresenceService,
        audit: AuditLog,
        version_of: VersionOf,
        pull: Pull,
        resumes: AskResumes,
    ) -> None:
        self.config = config
        self.db = db
        self.hub = hub
        self.presence = presence
        self.audit = audit
        self.version_of = version_of
        self._pull = pull
        self._resumes = resumes
        self._observing: dict[Peer[ClinicianIdentity], dict[UUID, Observation]] = {}
        self._checker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._checker = asyncio.create_task(self._check_forever())

    async def close(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            await asyncio.gather(self._checker, return_exceptions=True)

    # ---- the relationship check (every frame, from the router) ------------------------

    async def guard(self, peer: Peer[Identity], frame: ClientFrame) -> ProtocolError | None:
        identity = peer.identity
        if not isinstance(identity, ClinicianIdentity):
            return None  # a patient's own data only: the router checks that
        ref: str | None = getattr(frame, "id", None)
        patient: UUID | None = getattr(frame, "patient_id", None)
        if isinstance(frame, Observe):
            if await self._on_team(identity.sub, frame.patient_id):
                return None
            return _forbidden(NOT_ON_TEAM, ref, patient)
        if isinstance(frame, Unobserve):
            return None
        if patient is None:
            if isinstance(frame, SyncPull):
                return ProtocolError(ErrorCode.INVALID, "patient_id: required for clinicians", ref)
            return None
        if patient not in self._observing.get(_clinician(peer), {}):
            return _forbidden(NOT_OBSERVING, ref, patient)
        return None

    def denied(self, peer: Peer[Identity], frame: ClientFrame, error: ProtocolError) -> None:
        """Every refused frame goes into the audit trail."""
        identity = peer.identity
        patient: UUID | None = getattr(frame, "patient_id", None)
        if patient is None and isinstance(identity, PatientIdentity):
            patient = identity.patient_id
        reason = _reason(error)
        OBSERVE_DENIALS.labels(reason).inc()
        self.audit.note(
            AuditEvent(identity.sub, identity.role, patient, frame.type, "denied", reason, peer.id)
        )

    def refused_request(self, principal: Principal, action: str, patient: UUID | None) -> None:
        """An HTTP request refused as forbidden goes into the audit trail too."""
        if patient is None and isinstance(principal, PatientIdentity):
            patient = principal.patient_id
        OBSERVE_DENIALS.labels("http").inc()
        self.audit.note(
            AuditEvent(principal.sub, principal.role, patient, action, "denied", "http")
        )

    # ---- frames --------------------------------------------------------------------------

    async def observe(self, peer: Peer[ClinicianIdentity], frame: Observe) -> None:
        patient_id = frame.patient_id
        observed = self._observing.get(peer)
        if observed is None:
            observed = self._observing[peer] = {}
            peer.on_close(lambda: self._socket_closed(peer))
        if patient_id in observed:
            peer.send(Ack(ref=frame.id))
            return
        if len(observed) >= MAX_OBSERVED:
            message = f"patient_id: a socket may observe at most {MAX_OBSERVED} patients"
            peer.send_error(ProtocolError(ErrorCode.TOO_LARGE, message, frame.id))
            return
        observation = Observation(peer, patient_id, self.version_of)
        observed[patient_id] = observation
        OBSERVATIONS.inc()
        await self.hub.join(patient_topic(patient_id), observation)  # held from now on
        try:
            async with self.db.acquire() as conn:
                start = await snapshot(conn, patient_id, self.config.snapshot_messages)
            resumes = await self._resumes(patient_id)
            # Recorded before anything of the patient goes out.
            await self.audit.write(
                [
                    self._event(peer, patient_id, "observe", "allowed"),
                    self._event(peer, patient_id, "snapshot", "allowed"),
                ]
            )
        except BaseException:
            await self._end(peer, patient_id, None)
            raise
        await self.presence.joined(
            patient_id, Member(str(peer.id), "observer", str(peer.identity.sub), observation.since)
        )
        peer.send(Ack(ref=frame.id))
        peer.send(
            ObserveSnapshot(
                patient_id=patient_id,
                sync_version=start.version,
                thread_id=start.thread_id,
                messages=start.messages,
            )
        )
        for resume in resumes:
            peer.send(resume)
        observation.release(start.version, resumes)

    async def unobserve(self, peer: Peer[ClinicianIdentity], frame: Unobserve) -> None:
        await self._end(peer, frame.patient_id, "unobserve")
        peer.send(Ack(ref=frame.id))

    async def pull(self, peer: Peer[ClinicianIdentity], frame: SyncPull) -> None:
        assert frame.patient_id is not None  # the guard requires it of clinicians
        await self.audit.write([self._event(peer, frame.patient_id, "pull", "allowed")])
        version, changes, has_more = await self._pull(
            frame.patient_id, frame.since, frame.limit or DEFAULT_PULL_LIMIT
        )
        peer.send(
            SyncChanges(
                ref=frame.id,
                patient_id=frame.patient_id,
                since=frame.since,
                version=version,
                changes=changes,
                has_more=has_more,
            )
        )

    # ---- ending -------------------------------------------------------------------------

    async def _end(
        self, peer: Peer[ClinicianIdentity], patient_id: UUID, reason: str | None
    ) -> None:
        """Stop delivering the patient to this socket; `reason` None: it never started."""
        observation = self._observing.get(peer, {}).pop(patient_id, None)
        if observation is None:
            return
        OBSERVATIONS.dec()
        await self.hub.leave(patient_topic(patient_id), observation)
        if reason is not None:
            await self.presence.left(patient_id, str(peer.id))
            self.audit.note(self._event(peer, patient_id, "observe", "ended", reason))

    async def _socket_closed(self, peer: Peer[ClinicianIdentity]) -> None:
        for patient_id in tuple(self._observing.get(peer, {})):
            await self._end(peer, patient_id, "socket_closed")
        self._observing.pop(peer, None)

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.recheck_s)
            try:
                await self._check()
            except Exception as exc:  # the database is down: try again next round
                log.warning("checking observations failed: %s", type(exc).__name__)

    async def _check(self) -> None:
        live = [
            (peer, patient_id)
            for peer, observed in self._observing.items()
            for patient_id in observed
        ]
        if not live:
            return
        async with self.db.acquire() as conn:
            allowed = await in_force(conn, [(p.identity.sub, patient) for p, patient in live])
        for peer, patient_id in live:
            if (peer.identity.sub, patient_id) in allowed:
                continue
            await self._end(peer, patient_id, "care_team_ended")
            peer.send_error(
                _forbidden(
                    "patient_id: no longer on this patient's care team; observation ended",
                    None,
                    patient_id,
                )
            )

    def _event(
        self,
        peer: Peer[ClinicianIdentity],
        patient_id: UUID,
        action: str,
        outcome: Outcome,
        reason: str | None = None,
    ) -> AuditEvent:
        return AuditEvent(
            peer.identity.sub, "clinician", patient_id, action, outcome, reason, peer.id
        )

    async def _on_team(self, clinician_id: UUID, patient_id: UUID) -> bool:
        async with self.db.acquire() as conn:
            return bool(await in_force(conn, [(clinician_id, patient_id)]))


def _clinician(peer: Peer[Identity]) -> Peer[ClinicianIdentity]:
    return cast(Peer[ClinicianIdentity], peer)  # the caller checked the identity's role


def _forbidden(message: str, ref: str | None, patient_id: UUID | None) -> ProtocolError:
    return ProtocolError(ErrorCode.FORBIDDEN, message, ref, patient_id=patient_id)


def _reason(error: ProtocolError) -> str:
    """The metric label and audit reason of a refusal (the router's, a handler's or this
    guard's)."""
    if error.code != ErrorCode.FORBIDDEN:
        return "invalid"
    if error.message in (NOT_ON_TEAM, NOT_OBSERVING):
        return "not_on_team" if error.message == NOT_ON_TEAM else "not_observing"
    return "role" if " is not allowed for " in error.message else "other_patient"
