"""What the gateway needs of a model provider, and how a provider fails.

A provider raises `UpstreamFailure` for every failure of the model server, already
classified: what kind (the metric label), whether trying again can help, whether it was
a timeout. Callers import nothing of the client library behind it.
"""

from __future__ import annotations

import io
import wave
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

MEDIA_TYPES = {
    "wav": "audio/wav",
    "webm": "audio/webm",
    "ogg": "audio/ogg",
    "mp3": "audio/mpeg",
    "m4a": "audio/mp4",
}

FailureKind = Literal[
    "rate_limited",  # 429
    "server_error",  # 5xx
    "client_error",  # another 4xx: the request itself was refused; resending repeats it
    "timeout",
    "connection",  # could not connect, or the connection broke before a response
    "stream_cut",  # the response stream broke off, or carried an error or nonsense
    "internal",  # not the model's fault: the gateway's own part failed
    "bad_audio",  # the audio could not be decoded: sending it again will not help
]


class UpstreamFailure(Exception):
    def __init__(
        self, kind: FailureKind, message: str, *, retryable: bool, timeout: bool = False
    ) -> None:
        super().__init__(message)
        self.kind: FailureKind = kind
        self.message = message  # safe to show the client: never quotes the request
        self.retryable = retryable  # by the gateway, before the first token
        self.timeout = timeout


class EmbeddingSizeMismatch(UpstreamFailure):
    def __init__(self, message: str) -> None:
        super().__init__("client_error", message, retryable=False)


@dataclass(frozen=True)
class ChatChunk:
    """A piece of a streamed reply: text, and at the end why it stopped and the usage."""

    delta: str = ""
    finish_reason: str | None = None
    usage: dict[str, int] | None = None


class ChatProvider(Protocol):
    name: str

    def stream(self, messages: Sequence[Mapping[str, str]]) -> AsyncGenerator[ChatChunk, None]:
        """The reply in pieces; the last pieces carry the finish reason and the usage.
        Raises UpstreamFailure."""


class Embedder(Protocol):
    name: str

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector of VECTOR_DIM floats per text. Raises UpstreamFailure."""


@dataclass(frozen=True)
class Audio:
    """Audio to transcribe: a container file's bytes (`wav`, `webm`, `ogg`, `mp3`,
    `m4a`), or raw 16-bit little-endian mono PCM (`pcm16`) at `sample_rate`."""

    data: bytes
    format: str
    sample_rate: int | None = None
    language: str | None = None  # a hint such as "en"

    def as_file(self) -> tuple[str, bytes, str]:
        """(file name, bytes, media type) for an upload; raw PCM is wrapped as WAV."""
        if self.format == "pcm16":
            out = io.BytesIO()
            with wave.open(out, "wb") as wav:
                wav.setnchannels(1)
                wav.setsampwidth(2)
                wav.setframerate(self.sample_rate or 16000)
                wav.writeframes(self.data)
            return "audio.wav", out.getvalue(), "audio/wav"
        return f"audio.{self.format}", self.data, MEDIA_TYPES[self.format]


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str | None
    duration_s: float  # of the audio


class Transcriber(Protocol):
    name: str

    async def transcribe(self, audio: Audio) -> Transcript:
        """Raises UpstreamFailure (kind `client_error` for audio it cannot read)."""
