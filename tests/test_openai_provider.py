"""The OpenAI-compatible providers through the real `openai` client, against a local
server that speaks the OpenAI wire format."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest

from gateway.providers.base import ChatChunk, EmbeddingSizeMismatch, UpstreamFailure
from gateway.providers.openai_compat import OpenAIChat, OpenAIEmbedder, make_client
from tests.fake_openai import Behaviour, fake_openai_app
from tests.support import serve_app


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[openai.AsyncOpenAI, Behaviour]]:
    behaviour = Behaviour()
    async with serve_app(fake_openai_app(behaviour)) as (_, url):
        client = make_client(None, f"{url}/v1")
        try:
            yield client, behaviour
        finally:
            await client.close()


async def collect(chat: OpenAIChat) -> list[ChatChunk]:
    return [c async for c in chat.stream([{"role": "user", "content": "My knee hurts"}])]


async def test_a_streamed_reply_arrives_in_order_with_its_finish_reason_and_usage(
    upstream: tuple[openai.AsyncOpenAI, Behaviour],
) -> None:
    client, behaviour = upstream
    chat = OpenAIChat(client, "gpt-4o-mini")
    chunks = await collect(chat)
    assert "".join(c.delta for c in chunks) == "Hello, there."
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    assert chunks[-1].usage == {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}
    request = behaviour.requests[-1]
    assert request["stream"] is True and request["model"] == "gpt-4o-mini"
    assert request["messages"] == [{"role": "user", "content": "My knee hurts"}]


async def test_upstream_failures_surface_classified(
    upstream: tuple[openai.AsyncOpenAI, Behaviour],
) -> None:
    """The provider's callers see what failed and whether trying again can help, never
    the client library's exceptions."""
    client, behaviour = upstream
    chat = OpenAIChat(client, "gpt-4o-mini")

    async def failure() -> UpstreamFailure:
        with pytest.raises(UpstreamFailure) as raised:
            await collect(chat)
        return raised.value

    behaviour.fail_with = [429]
    failed = await failure()
    assert (failed.kind, failed.retryable, failed.timeout) == ("rate_limited", True, False)
    behaviour.fail_with = [500]
    failed = await failure()
    assert (failed.kind, failed.retryable, failed.message) == (
        "server_error",
        True,
        "the language model answered 500",
    )
    behaviour.fail_with = [400]
    failed = await failure()
    assert (failed.kind, failed.retryable) == ("client_error", False)
    behaviour.cut_after = 2
    failed = await failure()
    assert (failed.kind, failed.retryable) == ("stream_cut", True)
    behaviour.cut_after, behaviour.error_after = None, 1
    failed = await failure()
    assert failed.kind == "stream_cut" and "error in its stream" in failed.message


async def test_an_unreachable_server_is_a_connection_failure() -> None:
    client = make_client(None, "http://127.0.0.1:9/v1", connect_s=1.0)
    try:
        with pytest.raises(UpstreamFailure) as raised:
            await collect(OpenAIChat(client, "gpt-4o-mini"))
        assert (raised.value.kind, raised.value.retryable) == ("connection", True)
    finally:
        await client.close()


async def test_embeddings_come_back_in_input_order_with_the_configured_size(
    upstream: tuple[openai.AsyncOpenAI, Behaviour],
) -> None:
    client, behaviour = upstream
    embedder = OpenAIEmbedder(client, "text-embedding-3-small", 256)
    first, second = await embedder.embed(["knee pain", "back pain"])
    assert len(first) == len(second) == 256 and first != second
    assert behaviour.requests[-1]["dimensions"] == 256
    legacy = OpenAIEmbedder(client, "text-embedding-ada-002", 256)
    with pytest.raises(EmbeddingSizeMismatch, match="VECTOR_DIM is 256"):
        await legacy.embed(["knee pain"])  # no `dimensions` sent: the server's 1536 come back
