"""Model providers: chat, embeddings and transcription, over the OpenAI HTTP API or offline.

Which ones run is decided once, from the settings: with OPENAI_API_KEY or OPENAI_BASE_URL
the OpenAI-compatible ones, otherwise the offline ones (and `session.ready` says so).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.providers.base import ChatProvider, Embedder
from gateway.providers.offline import OfflineChat, OfflineEmbedder
from gateway.providers.openai_compat import OpenAIChat, OpenAIEmbedder, make_client
from gateway.settings import Settings
from protocol.frames import Providers


async def _nothing_to_close() -> None:
    return None


@dataclass(frozen=True)
class Models:
    chat: ChatProvider
    embedder: Embedder
    asr: str  # the transcription model's name (transcription is not wired yet)
    close: Callable[[], Awaitable[None]] = _nothing_to_close  # the shared HTTP client

    @property
    def providers(self) -> Providers:
        return Providers(chat=self.chat.name, asr=self.asr, embeddings=self.embedder.name)


def make_models(settings: Settings) -> Models:
    if settings.offline_models:
        return Models(OfflineChat(), OfflineEmbedder(settings.vector_dim), "offline")
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    client = make_client(
        key,
        settings.openai_base_url,
        connect_s=settings.chat_connect_timeout_s,
        # Reads are bounded by the chat pipeline's own token timeouts; this is a backstop.
        read_s=max(settings.chat_first_token_timeout_s, settings.chat_idle_timeout_s) + 5,
    )
    chat = OpenAIChat(client, settings.model_name)
    embedder = OpenAIEmbedder(client, settings.embedding_model, settings.vector_dim)
    return Models(chat, embedder, f"openai:{settings.transcription_model}", client.close)
