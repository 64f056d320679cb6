"""Model providers: chat, embeddings and transcription, over the OpenAI HTTP API or offline.

Which ones run is decided once, from the settings, capability by capability: with
OPENAI_API_KEY, or a base URL for it (CHAT_BASE_URL, EMBEDDING_BASE_URL,
TRANSCRIPTION_BASE_URL, each falling back to OPENAI_BASE_URL), an OpenAI-compatible server
(one client per server); otherwise the offline one (and `session.ready` says so).
Transcription follows TRANSCRIPTION_PROVIDER (unset: OpenAI-compatible when a server is
set for it, else local when the local-asr extra is installed, else none).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from openai import AsyncOpenAI

from gateway.providers import local_whisper
from gateway.providers.base import ChatProvider, Embedder, Transcriber
from gateway.providers.offline import OfflineChat, OfflineEmbedder
from gateway.providers.openai_compat import (
    OpenAIChat,
    OpenAIEmbedder,
    OpenAITranscriber,
    make_client,
)
from gateway.settings import Capability, Settings, SettingsError
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
        if settings.over_http("transcription"):
            provider = "openai"
        elif local_whisper.available():
            provider = "local"
        else:
            provider = "none"
    transcriber: Transcriber | None = None
    if provider == "local":
        if not local_whisper.available():
            raise SettingsError(
                f"TRANSCRIPTION_PROVIDER: local needs the local-asr extra; {INSTALL}"
            )
        transcriber = local_whisper.LocalWhisper(
            cpu_threads=settings.transcription_cpu_threads,
            workers=settings.transcription_concurrency,
        )
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    clients: dict[str | None, AsyncOpenAI] = {}  # one per server, shared by what it serves

    def client(capability: Capability) -> AsyncOpenAI:
        url = settings.base_url(capability)
        if url not in clients:
            clients[url] = make_client(
                key,
                url,
                connect_s=settings.chat_connect_timeout_s,
                # Reads are bounded by the chat pipeline's own token timeouts; a backstop.
                read_s=max(settings.chat_first_token_timeout_s, settings.chat_idle_timeout_s) + 5,
            )
        return clients[url]

    chat: ChatProvider = (
        OpenAIChat(client("chat"), settings.model_name)
        if settings.over_http("chat")
        else OfflineChat()
    )
    embedder: Embedder = (
        OpenAIEmbedder(client("embedding"), settings.embedding_model, settings.vector_dim)
        if settings.over_http("embedding")
        else OfflineEmbedder(settings.vector_dim)
    )
    if provider == "openai":
        transcriber = OpenAITranscriber(client("transcription"), settings.transcription_model)

    async def close() -> None:
        for each in clients.values():
            await each.close()

    return Models(chat, embedder, transcriber, close)
