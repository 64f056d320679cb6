"""`sync.push` and `sync.pull` over the socket."""

from __future__ import annotations

import time

from gateway.auth import PatientIdentity
from gateway.realtime.router import Peer, Router
from gateway.sync.service import DEFAULT_PULL_LIMIT, PushResult, SyncService, WritesBusy
from protocol.codec import ProtocolError
from protocol.codes import ErrorCode
from protocol.frames import SyncAck, SyncChanges, SyncPull, SyncPush


class SyncHandlers:
    def __init__(self, service: SyncService) -> None:
        self.service = service

    def register(self, router: Router) -> None:
        router.for_patients(SyncPush, self.push)
        router.for_patients(SyncPull, self.pull)

    async def push(self, peer: Peer[PatientIdentity], frame: SyncPush) -> None:
        identity = peer.identity

        def acknowledge(result: PushResult) -> None:
            # Sent once stored, before the push's own sync.delta goes out: on the pushing
            # socket the sync.ack always comes first.
            peer.send(
                SyncAck(
                    ref=frame.id,
                    version=result.version,
                    applied=result.applied,
                    duplicates=result.duplicates,
                    rejected=result.rejected,
                )
            )

        try:
            result = await self.service.push(
                identity.patient_id,
                identity.device_key,
                frame.mutations,
                origin=time.time(),
                committed=acknowledge,
            )
        except WritesBusy as busy:
            peer.send_error(ProtocolError(ErrorCode.BUSY, str(busy), frame.id, retryable=True))
            return
        for rejected in result.rejected:
            if rejected.code == ErrorCode.FORBIDDEN:  # another patient's thread or message
                message = "patient_id: a mutation names another patient's data"
                peer.report_refusal(frame, ProtocolError(ErrorCode.FORBIDDEN, message, frame.id))

    async def pull(self, peer: Peer[PatientIdentity], frame: SyncPull) -> None:
        # Another patient's id was refused by the router.
        patient_id = peer.identity.patient_id
        pulled = await self.service.pull(patient_id, frame.since, frame.limit or DEFAULT_PULL_LIMIT)
        peer.send(
            SyncChanges(
                ref=frame.id,
                patient_id=patient_id,
                since=frame.since,
                version=pulled.version,
                changes=pulled.changes,
                has_more=pulled.has_more,
            )
        )
