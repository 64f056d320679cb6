"""`audio.start`, `audio.append` (JSON or binary), `audio.commit` and `audio.cancel` over
the socket."""

from __future__ import annotations

from gateway.audio.service import AudioService
from gateway.realtime.router import Router
from protocol.frames import AudioAppend, AudioCancel, AudioCommit, AudioStart


def register(router: Router, service: AudioService) -> None:
    router.for_patients(AudioStart, service.start)
    router.for_patients(AudioAppend, service.append)
    router.for_patients(AudioCommit, service.commit)
    router.for_patients(AudioCancel, service.cancel)
