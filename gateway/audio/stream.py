"""One open audio stream: its chunks in order, its audio (gateway/audio/spool.py), its
limits, and for `server_vad` where its utterances are. The service around it
(gateway/audio/service.py) does the I/O: timers, transcription, frames out."""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.audio.chunks import ChunkOrder
from gateway.audio.spool import Spool
from gateway.audio.turns import SpeechStarted, SpeechStopped, TurnDetector
from gateway.auth import PatientIdentity
from gateway.providers.base import Audio
from protocol.codec import ProtocolError
from protocol.codes import ErrorCode
from protocol.frames import AudioStart

PAD_MS = 200  # audio kept on each side of an utterance, for the recogniser's sake


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_seconds: float


class StreamEnded(Exception):
    """The stream broke a limit and is over; `error` says which (failure `kind`)."""

    def __init__(self, kind: str, error: ProtocolError) -> None:
        super().__init__(error.message)
        self.kind = kind
        self.error = error


class AudioStream:
    def __init__(
        self,
        start: AudioStart,
        patient: PatientIdentity,
        spool: Spool,
        limits: Limits,
        detector: TurnDetector | None = None,
    ) -> None:
        self.start = start
        self.id = start.stream_id
        self.patient = patient
        self.spool = spool
        self.limits = limits
        self.detector = detector
        self.order = ChunkOrder()
        self.opened = time.monotonic()
        self.transcribed_to = 0  # bytes of audio already sent for transcription (server_vad)
        self.utterances = 0  # transcripts made or on their way

    @property
    def bytes_per_second(self) -> int | None:
        """For raw PCM; None for a container (its length is known only once decoded)."""
        rate = self.start.sample_rate
        return 2 * rate if self.start.format == "pcm16" and rate else None

    @property
    def seconds(self) -> float:
        """Audio received so far: by its size for PCM, by the clock for a container."""
        per_second = self.bytes_per_second
        if per_second is None:
            return time.monotonic() - self.opened
        return self.spool.size / per_second

    def append(self, seq: int, audio: bytes) -> bytes:
        """Take a chunk; the audio now in order (empty while after a gap). Raises
        StreamEnded when a limit is passed."""
        held = self.spool.size + self.order.waiting_bytes + len(audio)
        if held > self.limits.max_bytes:
            raise StreamEnded(
                "too_large",
                ProtocolError(
                    ErrorCode.TOO_LARGE,
                    f"audio: the stream passed max_audio_bytes ({self.limits.max_bytes}); "
                    "it was ended and its audio discarded",
                ),
            )
        ready = b"".join(self.order.add(seq, audio))
        if ready:
            self.spool.write(ready)
        if self.seconds > self.limits.max_seconds:
            raise StreamEnded(
                "too_long",
                ProtocolError(
                    ErrorCode.TOO_LARGE,
                    f"audio: the stream passed {self.limits.max_seconds:g} s of audio; "
                    "it was ended and its audio discarded",
                ),
            )
        return ready

    def check_complete(self) -> ProtocolError | None:
        """Why the stream cannot be transcribed as it is, if it cannot."""
        missing = self.order.missing
        if missing is not None:
            return ProtocolError(ErrorCode.INVALID, f"seq: chunk {missing} is missing")
        if self.spool.size == 0:
            return ProtocolError(ErrorCode.INVALID, "audio: the stream holds no audio")
        return None

    def audio(self, start: int = 0, end: int | None = None) -> Audio:
        """Bytes [start, end) of the stream's audio, ready for a transcriber."""
        return Audio(
            self.spool.read(start, end),
            self.start.format,
            self.start.sample_rate,
            self.start.language,
        )

    def utterance_bytes(self, event: SpeechStopped) -> tuple[int, int]:
        """The byte range of an utterance with its padding (PCM only)."""
        per_second = self.bytes_per_second or 0
        start = max(self.transcribed_to, self._byte_at(event.start_ms - PAD_MS, per_second))
        end = min(self.spool.size, self._byte_at(event.end_ms + PAD_MS, per_second))
        return start, max(start, end)

    def speech(self, probabilities: list[float]) -> list[SpeechStarted | SpeechStopped]:
        """What the detector made of the windows just classified."""
        assert self.detector is not None
        events = [self.detector.feed(p) for p in probabilities]
        return [e for e in events if e is not None]

    def close(self) -> None:
        self.spool.close()

    @staticmethod
    def _byte_at(ms: float, per_second: int) -> int:
        offset = int(max(0.0, ms) * per_second / 1000)
        return offset - offset % 2  # whole samples
