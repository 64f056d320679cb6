"""Which received frames a socket may act on. Two token buckets: the socket's own
(FRAMES_PER_S, BURST) and its patient's, shared by all the patient's sockets on this
process (PATIENT_FRAMES_PER_S, PATIENT_BURST), where a frame that writes costs more. And
when a client that keeps sending into them is cut off."""

from __future__ import annotations

import time
from uuid import UUID

from gateway.ratelimit import KeyedBuckets, TokenBucket

# Frames that write and start work (a transaction, a fan-out, a model call) take this
# many of the patient's budget; every other frame takes one.
WRITES = frozenset({"sync.push", "chat.send", "audio.commit"})
WRITE_FRAME_COST = 10
# A socket that has had this many frames refused, without pausing for REFUSAL_PAUSE_S
# since the last refusal, is to be closed (1008): it is not backing off, and every
# refusal still costs the gateway a frame's work.
MAX_REFUSED = 50
REFUSAL_PAUSE_S = 1.0

SOCKET_LIMITED = "too many frames; slow down"
PATIENT_LIMITED = "too many frames from this patient's sockets; slow down"


class Admission:
    def __init__(self, own: TokenBucket, patients: KeyedBuckets, patient_id: UUID | None) -> None:
        self._own = own
        self._patients = patients
        self._patient_id = patient_id
        self._refused = 0  # since the client last paused
        self._last_refused = 0.0

    def before_decoding(self) -> str | None:
        """Why the next frame is refused, or None. Charges one frame to both buckets
        (refusing before decoding costs little)."""
        if not self._own.take():
            return SOCKET_LIMITED
        if self._patient_id is not None and not self._patients.take(self._patient_id):
            return PATIENT_LIMITED
        return None

    def after_decoding(self, frame_type: str) -> str | None:
        """The rest of a write's cost, once its type is known."""
        if self._patient_id is None or frame_type not in WRITES:
            return None
        if not self._patients.take(self._patient_id, WRITE_FRAME_COST - 1):
            return PATIENT_LIMITED
        return None

    def refused(self) -> bool:
        """Count a refusal; True when the socket should be closed for not backing off
        (a client that pauses after an error starts over; one that keeps sending is cut
        off even if a frame gets through now and then)."""
        now = time.monotonic()
        if now - self._last_refused >= REFUSAL_PAUSE_S:
            self._refused = 0
        self._refused += 1
        self._last_refused = now
        return self._refused > MAX_REFUSED
