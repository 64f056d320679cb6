"""A stream's chunks put back in `seq` order, without I/O.

WebSocket frames arrive in order, so a gap means the client lost or skipped a chunk (a
reconnect, a bug). Chunks after a gap wait here until it is filled; a duplicate `seq`
(a resend) is ignored. Audio leaves only in order, as soon as it is contiguous.
"""

from __future__ import annotations


class ChunkOrder:
    def __init__(self) -> None:
        self.next_seq = 0  # the seq the in-order audio continues with
        self._waiting: dict[int, bytes] = {}  # after a gap
        self.waiting_bytes = 0

    def add(self, seq: int, audio: bytes) -> list[bytes]:
        """Take a chunk; the audio that is now in order (possibly none)."""
        if seq < self.next_seq or seq in self._waiting:
            return []  # a duplicate
        if seq > self.next_seq:
            self._waiting[seq] = audio
            self.waiting_bytes += len(audio)
            return []
        ready = [audio]
        self.next_seq += 1
        while self.next_seq in self._waiting:
            chunk = self._waiting.pop(self.next_seq)
            self.waiting_bytes -= len(chunk)
            ready.append(chunk)
            self.next_seq += 1
        return ready

    @property
    def missing(self) -> int | None:
        """The first seq that never came although later ones did (None: no gap)."""
        return self.next_seq if self._waiting else None
