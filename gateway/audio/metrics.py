"""Voice's Prometheus metrics: sizes, counts, latencies and failure kinds, never text."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

AUDIO_BYTES_IN = Counter("audio_bytes_in_total", "Audio bytes received in streams")
AUDIO_STREAMS_OPEN = Gauge("audio_streams_open", "Audio streams open on this process")
TRANSCRIPTION_SECONDS = Histogram(
    "transcription_seconds",
    "Time to transcribe one utterance or committed stream, by provider",
    ["provider"],
    buckets=(0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0),
)
TRANSCRIPTION_RTF = Histogram(
    "transcription_real_time_factor",
    "Transcription time over the audio's duration, by provider",
    ["provider"],
    buckets=(0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0),
)
VAD_UTTERANCES = Counter(
    "audio_vad_utterances_total", "Utterances the gateway's voice-activity detection ended"
)
AUDIO_FAILURES = Counter(
    "audio_failures_total", "Audio streams or transcriptions that failed, by kind", ["kind"]
)  # too_large, too_long, idle, gap, empty, busy, bad_audio, upstream
