"""Chat and embeddings over the OpenAI HTTP API, through the `openai` client: OpenAI itself
or any compatible server (vLLM, llama.cpp server, Ollama) via OPENAI_BASE_URL."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
from openai import APIConnectionError, AsyncOpenAI, Timeout
from openai.types.chat import ChatCompletionMessageParam


@dataclass(frozen=True)
class ChatChunk:
    """A piece of a streamed reply: text, and at the end why it stopped and the usage."""

    delta: str = ""
    finish_reason: str | None = None
    usage: dict[str, int] | None = None


class EmbeddingSizeMismatch(RuntimeError):
    pass


def make_client(
    api_key: str | None, base_url: str | None, *, timeout: float | Timeout = 30.0
) -> AsyncOpenAI:
    # A local server often needs no key; the client insists on one.
    return AsyncOpenAI(
        api_key=api_key or "not-needed", base_url=base_url, timeout=timeout, max_retries=0
    )


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
        async with request as response:
            body = orjson.loads(await response.read())
        items = sorted(body["data"], key=lambda item: item["index"])
        vectors: list[list[float]] = [item["embedding"] for item in items]
        for vector in vectors:
            if len(vector) != self.dim:
                raise EmbeddingSizeMismatch(
                    f"EMBEDDING_MODEL returns {len(vector)} dimensions, VECTOR_DIM is {self.dim}"
                )
        return vectors


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
        async with request as response:  # closes the response, also on an early stop
            try:
                async for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue  # blank lines, comments, event names
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    for chunk in _chunks(orjson.loads(data)):
                        yield chunk
            except StreamError:
                raise
            except Exception as exc:  # the body broke off, or could not be read
                raise StreamError(
                    "the stream failed part-way", request=response.http_request
                ) from exc


class StreamError(APIConnectionError):
    """The event stream broke off, or carried an error or something unreadable."""

    def __init__(self, message: str, *, request: Any) -> None:
        super().__init__(message=message, request=request)


def _chunks(event: Any) -> list[ChatChunk]:
    if not isinstance(event, dict) or "error" in event:
        raise StreamError("the model sent an error in its stream", request=None)
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
