"""Model providers: chat, embeddings and transcription, over the OpenAI HTTP API or offline.

Which ones run is decided once, from the settings: with OPENAI_API_KEY or OPENAI_BASE_URL
the OpenAI-compatible ones, otherwise the offline ones (and `session.ready` says so).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from openai import AsyncOpenAI, Timeout

from gateway.providers.offline import OfflineChat, OfflineEmbedder
from gateway.providers.openai_compat import ChatChunk, OpenAIChat, OpenAIEmbedder, make_client
from gateway.settings import Settings
from protocol.frames import Providers


class ChatProvider(Protocol):
    name: str

    def stream(self, messages: Sequence[Mapping[str, str]]) -> AsyncGenerator[ChatChunk, None]:
        """The reply in pieces; the last pieces carry the finish reason and the usage."""


class Embedder(Protocol):
    name: str

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector of VECTOR_DIM floats per text."""


@dataclass(frozen=True)
class Models:
    chat: ChatProvider
    embedder: Embedder
    asr: str  # the transcription model's name (transcription is not wired yet)
    client: AsyncOpenAI | None = None  # the HTTP client the OpenAI providers share

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()

    @property
    def providers(self) -> Providers:
        return Providers(chat=self.chat.name, asr=self.asr, embeddings=self.embedder.name)


def make_models(settings: Settings) -> Models:
    if settings.offline_models:
        return Models(OfflineChat(), OfflineEmbedder(settings.vector_dim), "offline")
    # Connect fails fast; reads are bounded by the chat pipeline's own token timeouts.
    timeout = Timeout(
        connect=settings.chat_connect_timeout_s,
        read=max(settings.chat_first_token_timeout_s, settings.chat_idle_timeout_s) + 5,
        write=settings.chat_connect_timeout_s,
        pool=settings.chat_connect_timeout_s,
    )
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    client = make_client(key, settings.openai_base_url, timeout=timeout)
    chat = OpenAIChat(client, settings.model_name)
    embedder = OpenAIEmbedder(client, settings.embedding_model, settings.vector_dim)
    return Models(chat, embedder, f"openai:{settings.transcription_model}", client)
