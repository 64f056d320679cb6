"""Chat and embeddings over the OpenAI HTTP API, through the `openai` client: OpenAI itself
or any compatible server (vLLM, llama.cpp server, Ollama) via OPENAI_BASE_URL."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from openai import AsyncOpenAI, Timeout
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
        response = await self.client.embeddings.create(model=self.model, input=list(texts), **extra)
        vectors = [item.embedding for item in sorted(response.data, key=lambda d: d.index)]
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
        response = await self.client.chat.completions.create(
            model=self.model,
            messages=[cast(ChatCompletionMessageParam, dict(m)) for m in messages],
            stream=True,
            stream_options={"include_usage": True},
        )
        try:
            async for chunk in response:
                usage = chunk.usage.model_dump() if chunk.usage is not None else None
                for choice in chunk.choices:
                    text = choice.delta.content or ""
                    if text or choice.finish_reason:
                        yield ChatChunk(text, choice.finish_reason, None)
                if usage is not None:
                    yield ChatChunk(usage={k: v for k, v in usage.items() if isinstance(v, int)})
        finally:
            await response.close()  # also when the consumer stops early (cancel)
