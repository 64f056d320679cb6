"""What the gateway needs of a model provider, and how a provider fails.

A provider raises `UpstreamFailure` for every failure of the model server, already
classified: what kind (the metric label), whether trying again can help, whether it was
a timeout. Callers import nothing of the client library behind it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

FailureKind = Literal[
    "rate_limited",  # 429
    "server_error",  # 5xx
    "client_error",  # another 4xx: the request itself was refused; resending repeats it
    "timeout",
    "connection",  # could not connect, or the connection broke before a response
    "stream_cut",  # the response stream broke off, or carried an error or nonsense
    "internal",  # not the model's fault: the gateway's own part failed
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
