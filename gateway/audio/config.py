"""Voice's settings, read once from the environment's (gateway/settings.py)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.settings import Settings


@dataclass(frozen=True)
class AudioConfig:
    max_bytes: int  # per stream
    max_seconds: float  # of audio per stream (pcm16; containers: since audio.start)
    idle_timeout_s: float  # between chunks
    spool_memory_bytes: int  # a stream's audio past this goes to a temporary file
    concurrency: int  # transcriptions at once on this process
    max_streams_per_socket: int
    retries: int  # of a transcription that failed retryably, before any result
    retry_backoff_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> AudioConfig:
        return cls(
            max_bytes=settings.max_audio_bytes,
            max_seconds=settings.max_audio_seconds,
            idle_timeout_s=settings.audio_idle_timeout_s,
            spool_memory_bytes=settings.audio_spool_bytes,
            concurrency=settings.transcription_concurrency,
            max_streams_per_socket=settings.max_audio_streams,
            retries=settings.chat_retries,
            retry_backoff_s=settings.chat_retry_backoff_s,
        )
