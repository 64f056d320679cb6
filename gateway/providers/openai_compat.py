"""Chat and embeddings over the OpenAI HTTP API, through the `openai` client: OpenAI itself
or any compatible server (vLLM, llama.cpp server, Ollama) via OPENAI_BASE_URL.

Every failure leaves as a classified `UpstreamFailure` (gateway/providers/base.py).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, cast

import openai
import orjson
from openai import AsyncOpenAI, Timeout
from openai.types.chat import ChatCompletionMessageParam

from gateway.providers.base import (
    Audio,
    ChatChunk,
    EmbeddingSizeMismatch,
    FailureKind,
    Transcript,
    UpstreamFailure,
)


def make_client(
    api_key: str | None, base_url: str | None, *, connect_s: float = 10.0, read_s: float = 35.0
) -> AsyncOpenAI:
    # Connect fails fast; retries are the caller's (the chat pipeline's), so none here.
    timeout = Timeout(connect=connect_s, read=read_s, write=connect_s, pool=connect_s)
    # A local server often needs no key; the client insists on one.
    return AsyncOpenAI(
        api_key=api_key or "not-needed", base_url=base_url, timeout=timeout, max_retries=0
    )


def classify(exc: Exception) -> UpstreamFailure:
    """What an exception of the `openai` client means."""
    if isinstance(exc, openai.RateLimitError):
        return UpstreamFailure(
            "rate_limited", "the language model is rate limited (429)", retryable=True
        )
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        kind: FailureKind = "server_error" if status >= 500 else "client_error"
        message = f"the language model answered {status}"
        return UpstreamFailure(kind, message, retryable=status >= 500)
    if isinstance(exc, openai.APITimeoutError):
        return UpstreamFailure(
            "timeout", "the language model timed out", retryable=True, timeout=True
        )
    if isinstance(exc, openai.APIConnectionError):
        return UpstreamFailure(
            "connection", "the language model could not be reached", retryable=True
        )
    return UpstreamFailure("stream_cut", "the language model's stream failed", retryable=True)


class OpenAIEmbedder:
    def __init__(self, client: AsyncOpenAI, model: str, dim: int) -> None:
        self.client = client
        self.model = model
        self.dim = dim
        self.name = f"openai:{model}"

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        extra: dict[str, Any] = {}
        if self.model.startswith("text-embedding-3"):
            extra["dimensions"] = self.dim  # shortened embeddings: only these models take it
        # Floats as JSON, read here: building the client's models for 1536 floats per text
        # cost more CPU than the rest of a chat exchange's work in the gateway.
        request = self.client.embeddings.with_streaming_response.create(
            model=self.model, input=list(texts), encoding_format="float", **extra
        )
        try:
            async with request as response:
                body = orjson.loads(await response.read())
            items = sorted(body["data"], key=lambda item: item["index"])
        except openai.APIError as exc:
            raise classify(exc) from exc
        except Exception as exc:  # not the JSON of an embeddings response
            raise UpstreamFailure(
                "stream_cut", "the embedding server's answer was unreadable", retryable=True
            ) from exc
        vectors: list[list[float]] = [item["embedding"] for item in items]
        for vector in vectors:
            if len(vector) != self.dim:
                raise EmbeddingSizeMismatch(
                    f"EMBEDDING_MODEL returns {len(vector)} dimensions, VECTOR_DIM is {self.dim}"
                )
        return vectors


# Words a pain-management conversation uses that speech recognisers tend to mishear.
TRANSCRIPTION_PROMPT = (
    "Pain, aching, burning, stabbing, throbbing, shooting, cramping, tingling, numbness, "
    "lower back, sciatica, migraine, physiotherapy, ibuprofen, paracetamol."
)


class OpenAITranscriber:
    """`/audio/transcriptions`: OpenAI's Whisper, or a compatible server
    (faster-whisper-server, vLLM, LocalAI)."""

    def __init__(self, client: AsyncOpenAI, model: str) -> None:
        self.client = client
        self.model = model
        self.name = f"openai:{model}"

    async def transcribe(self, audio: Audio) -> Transcript:
        name, data, media_type = audio.as_file()
        extra: dict[str, Any] = {}
        if audio.language:
            extra["language"] = audio.language.split("-")[0].lower()  # ISO-639-1
        try:
            result = await self.client.audio.transcriptions.create(
                model=self.model,
                file=(name, data, media_type),
                prompt=TRANSCRIPTION_PROMPT,
                response_format="json",
                **extra,
            )
        except openai.BadRequestError as exc:
            raise UpstreamFailure(
                "bad_audio", "the transcription server could not read it", retryable=False
            ) from exc
        except openai.APIError as exc:
            raise classify(exc) from exc
        duration_s = len(audio.data) / (2 * audio.sample_rate) if audio.sample_rate else 0.0
        return Transcript(result.text.strip(), audio.language, duration_s)


class OpenAIChat:
    def __init__(self, client: AsyncOpenAI, model: str) -> None:
        self.client = client
        self.model = model
        self.name = f"openai:{model}"

    async def stream(
        self, messages: Sequence[Mapping[str, str]]
    ) -> AsyncGenerator[ChatChunk, None]:
        # The raw event stream, read here: the client's own per-chunk model building cost
        # more CPU than everything else the gateway does with a token.
        request = self.client.chat.completions.with_streaming_response.create(
            model=self.model,
            messages=[cast(ChatCompletionMessageParam, dict(m)) for m in messages],
            stream=True,
            stream_options={"include_usage": True},
        )
        finished = False
        try:
            async with request as response:  # closes the response, also on an early stop
                async for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue  # blank lines, comments, event names
                    data = line[5:].strip()
                    if data == "[DONE]":
                        if not finished:
                            # Servers that name no finish reason end with [DONE] alone: a
                            # complete stream all the same (a cut one never gets here).
                            yield ChatChunk(finish_reason="stop")
                        return
                    for chunk in _chunks(data):
                        finished = finished or chunk.finish_reason is not None
                        yield chunk
        except UpstreamFailure:
            raise
        except openai.APIError as exc:
            raise classify(exc) from exc
        except Exception as exc:  # the body broke off, or could not be read
            raise UpstreamFailure(
                "stream_cut", "the language model's stream failed part-way", retryable=True
            ) from exc


def _chunks(data: str) -> list[ChatChunk]:
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamFailure(
            "stream_cut", "the language model sent something unreadable", retryable=True
        ) from None
    if not isinstance(event, dict) or "error" in event:
        raise UpstreamFailure(
            "stream_cut", "the language model sent an error in its stream", retryable=True
        )
    out = []
    for choice in event.get("choices") or ():
        text = (choice.get("delta") or {}).get("content") or ""
        finish = choice.get("finish_reason")
        if text or finish:
            out.append(ChatChunk(text, finish, None))
    usage = event.get("usage")
    if isinstance(usage, dict):
        out.append(ChatChunk(usage={k: v for k, v in usage.items() if isinstance(v, int)}))
    return out
