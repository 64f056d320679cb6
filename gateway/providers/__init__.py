"""Model providers: chat, embeddings and transcription, over the OpenAI HTTP API or offline.

Which ones run is decided once, from the settings: with OPENAI_API_KEY or OPENAI_BASE_URL
the OpenAI-compatible ones, otherwise the offline ones (and `session.ready` says so).
Transcription follows TRANSCRIPTION_PROVIDER (unset: OpenAI-compatible when a key or base
URL is set, else local when the local-asr extra is installed, else none).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.providers import local_whisper
from gateway.providers.base import ChatProvider, Embedder, Transcriber
from gateway.providers.offline import OfflineChat, OfflineEmbedder
from gateway.providers.openai_compat import (
    OpenAIChat,
    OpenAIEmbedder,
    OpenAITranscriber,
    make_client,
)
from gateway.settings import Settings, SettingsError
from protocol.frames import Providers


async def _nothing_to_close() -> None:
    return None


INSTALL = "pip install 'painar-gateway[local-asr]'"
NO_TRANSCRIPTION = (
    f"set OPENAI_API_KEY or OPENAI_BASE_URL, or install the local-asr extra ({INSTALL})"
)


@dataclass(frozen=True)
class Models:
    chat: ChatProvider
    embedder: Embedder
    transcriber: Transcriber | None  # None: no transcription (NO_TRANSCRIPTION says why)
    close: Callable[[], Awaitable[None]] = _nothing_to_close  # the shared HTTP client

    @property
    def providers(self) -> Providers:
        asr = self.transcriber.name if self.transcriber is not None else "none"
        return Providers(chat=self.chat.name, asr=asr, embeddings=self.embedder.name)


def make_models(settings: Settings) -> Models:
    provider = settings.transcription_provider
    if provider is None:
        if not settings.offline_models:
            provider = "openai"
        elif local_whisper.available():
            provider = "local"
        else:
            provider = "none"
    local: Transcriber | None = None
    if provider == "local":
        if not local_whisper.available():
            raise SettingsError(
                f"TRANSCRIPTION_PROVIDER: local needs the local-asr extra; {INSTALL}"
            )
        local = local_whisper.LocalWhisper(
            cpu_threads=settings.transcription_cpu_threads,
            workers=settings.transcription_concurrency,
        )
    if settings.offline_models and provider != "openai":
        return Models(OfflineChat(), OfflineEmbedder(settings.vector_dim), local)
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    client = make_client(
        key,
        settings.openai_base_url,
        connect_s=settings.chat_connect_timeout_s,
        # Reads are bounded by the chat pipeline's own token timeouts; this is a backstop.
        read_s=max(settings.chat_first_token_timeout_s, settings.chat_idle_timeout_s) + 5,
    )
    if settings.offline_models:  # transcription over HTTP, the rest offline
        chat: ChatProvider = OfflineChat()
        embedder: Embedder = OfflineEmbedder(settings.vector_dim)
    else:
        chat = OpenAIChat(client, settings.model_name)
        embedder = OpenAIEmbedder(client, settings.embedding_model, settings.vector_dim)
    transcriber = local
    if provider == "openai":
        transcriber = OpenAITranscriber(client, settings.transcription_model)
    return Models(chat, embedder, transcriber, client.close)
