"""Where speech starts and stops in a stream, from a voice-activity detector's speech
probability per window of audio. Pure: no I/O, no model (the model is gateway/audio/vad.py).

Speech starts once `min_speech_ms` of windows in a row are at or above `threshold`; it
stops once `silence_ms` of windows in a row are below `threshold - 0.15` (a gap between
the two thresholds keeps one soft syllable from ending an utterance). Times are
milliseconds from the start of the stream's audio.
"""

from __future__ import annotations

from dataclasses import dataclass

NEGATIVE_MARGIN = 0.15


@dataclass(frozen=True)
class SpeechStarted:
    utterance: int
    start_ms: int


@dataclass(frozen=True)
class SpeechStopped:
    utterance: int
    start_ms: int
    end_ms: int


class TurnDetector:
    def __init__(
        self,
        *,
        window_ms: float,
        silence_ms: int,
        threshold: float = 0.5,
        min_speech_ms: int = 250,
    ) -> None:
        self.window_ms = window_ms
        self.silence_ms = silence_ms
        self.threshold = threshold
        self.min_speech_ms = min_speech_ms
        self.utterance = 0  # the next utterance's number
        self.in_speech = False
        self._position_ms = 0.0  # end of the windows seen so far
        self._speech_since: float | None = None  # start of the current run of speech
        self._silence_since: float | None = None  # start of the current run of silence
        self._started_at = 0.0

    def feed(self, probability: float) -> SpeechStarted | SpeechStopped | None:
        """Take the next window's speech probability; what it ended or began, if anything."""
        start, self._position_ms = self._position_ms, self._position_ms + self.window_ms
        if not self.in_speech:
            if probability < self.threshold:
                self._speech_since = None
                return None
            if self._speech_since is None:
                self._speech_since = start
            if self._position_ms - self._speech_since < self.min_speech_ms:
                return None
            self.in_speech, self._started_at = True, self._speech_since
            self._speech_since, self._silence_since = None, None
            return SpeechStarted(self.utterance, round(self._started_at))
        if probability >= self.threshold - NEGATIVE_MARGIN:
            if probability >= self.threshold:
                self._silence_since = None
            return None
        if self._silence_since is None:
            self._silence_since = start
        if self._position_ms - self._silence_since < self.silence_ms:
            return None
        return self._stop(self._silence_since)

    def finish(self) -> SpeechStopped | None:
        """The stream ended: an utterance still going ends here."""
        if not self.in_speech:
            return None
        end = self._silence_since if self._silence_since is not None else self._position_ms
        return self._stop(end)

    def _stop(self, end: float) -> SpeechStopped:
        stopped = SpeechStopped(self.utterance, round(self._started_at), round(end))
        self.in_speech, self._silence_since = False, None
        self.utterance += 1
        return stopped
