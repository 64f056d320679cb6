"""One socket watching one patient: the hub's listener that forwards the patient's frames
to the socket, holding them back while the observation starts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from uuid import UUID

import orjson

from gateway.auth import ClinicianIdentity
from gateway.realtime.catchup import not_resumed
from gateway.realtime.router import Peer
from protocol.frames import ChatResume, SyncVersion

VersionOf = Callable[[UUID], Awaitable[int]]


class Observation:
    def __init__(
        self, peer: Peer[ClinicianIdentity], patient_id: UUID, version_of: VersionOf
    ) -> None:
        self.peer = peer
        self.patient_id = patient_id
        self.since = datetime.now(UTC)
        self.held: list[str] | None = []
        self._version_of = version_of

    def deliver(self, text: str) -> None:
        if self.held is not None:
            self.held.append(text)
        else:
            self.peer.deliver(text)

    def broker_recovered(self) -> None:
        self.peer.spawn(self._send_version())

    async def _send_version(self) -> None:
        version = await self._version_of(self.patient_id)
        self.peer.send(SyncVersion(patient_id=self.patient_id, version=version))

    def release(self, snapshot_version: int, resumes: list[ChatResume]) -> None:
        """Send what was held, less what the snapshot and the resumes already hold."""
        held, self.held = self.held or [], None
        for text in not_resumed(held, resumes):
            if not _in_snapshot(text, snapshot_version):
                self.peer.deliver(text)


def _in_snapshot(text: str, snapshot_version: int) -> bool:
    if text.startswith('{"type":"sync.delta"'):
        return int(orjson.loads(text)["version"]) <= snapshot_version
    return False
