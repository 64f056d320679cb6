"""The model's stream, relayed: chunks in from the chat provider, coalesced `chat.delta`
frames out on the patient's topic (the stream's state is gateway/chat/stream.py).

Failures: retries with backoff on 429, 5xx, connection failures and the first-token
timeout, only while no token has arrived; after that a failure ends the reply with
`finish_reason: error`, keeping what arrived.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator

from gateway import tracing
from gateway.chat.config import ChatConfig
from gateway.chat.metrics import (
    CHAT_FIRST_TOKEN_ADDED,
    CHAT_FIRST_TOKEN_UPSTREAM,
    CHAT_TOKEN_RATE,
    CHAT_TOKENS,
    UPSTREAM_ERRORS,
)
from gateway.chat.replies import Reply
from gateway.providers.base import ChatChunk, ChatProvider, UpstreamFailure
from gateway.realtime.broker import BrokerUnavailable
from gateway.realtime.hub import Hub
from protocol.frames import ChatDelta, Usage

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 8.0


class Relay:
    def __init__(self, reply: Reply, config: ChatConfig, hub: Hub, chat: ChatProvider) -> None:
        self.reply = reply
        self.config = config
        self.hub = hub
        self.chat = chat

    async def run(self, messages: list[dict[str, str]]) -> Usage | None:
        """Stream the model's reply, retrying while nothing arrived. Runs as a task of its
        own: stopping the reply cancels it (which closes the upstream)."""
        attempt = 0
        while True:
            try:
                # Deltas published meanwhile carry this span to the processes they reach.
                with tracing.span("chat.relay", model=self.chat.name, attempts=attempt + 1) as span:
                    return await self._once(messages, span)
            except UpstreamFailure as failure:
                UPSTREAM_ERRORS.labels(failure.kind).inc()
                log.warning("model request failed: %s (attempt %d)", failure.kind, attempt + 1)
                stream = self.reply.stream
                if stream.text or not failure.retryable or attempt >= self.config.retries:
                    self.reply.failure = failure
                    stream.finish("error")
                    return None
                delay = min(MAX_BACKOFF_S, self.config.retry_backoff_s * 2**attempt)
                attempt += 1
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    async def _once(self, messages: list[dict[str, str]], span: tracing.Span) -> Usage | None:
        reply, config, stream = self.reply, self.config, self.reply.stream
        loop = asyncio.get_running_loop()
        idle_s = config.idle_timeout_s
        sent_at = time.monotonic()
        rescheduled = loop.time()
        first: float | None = None
        last = sent_at
        tokens = 0
        usage: Usage | None = None
        waiting = tracing.begin("chat.model", model=self.chat.name)  # request to first token
        chunks: AsyncGenerator[ChatChunk, None] = self.chat.stream(messages)
        try:
            async with asyncio.timeout(config.first_token_timeout_s) as watchdog:
                async for chunk in chunks:
                    now = loop.time()
                    last = time.monotonic()
                    if first is not None and now - rescheduled > idle_s / 10:
                        # Moving the deadline costs a timer; once per tenth of the timeout
                        # will do.
                        watchdog.reschedule(now + idle_s)
                        rescheduled = now
                    if chunk.delta:
                        tokens += 1
                        if first is None:
                            first, rescheduled = last, now
                            waiting.end(outcome="first_token")
                            watchdog.reschedule(now + idle_s)
                            CHAT_FIRST_TOKEN_UPSTREAM.observe(first - sent_at)
                        await self._add(chunk.delta, now)
                        if tokens == 1:
                            # The time this gateway added: all but the model's own wait.
                            added = (time.monotonic() - reply.request.received) - (first - sent_at)
                            CHAT_FIRST_TOKEN_ADDED.observe(max(0.0, added))
                    if chunk.finish_reason is not None:
                        stream.finish("length" if chunk.finish_reason == "length" else "stop")
                    if chunk.usage is not None:
                        usage = Usage.model_validate(chunk.usage)
        except TimeoutError:
            if not watchdog.expired():
                raise
            what = "its first token" if first is None else "its next token"
            limit = config.first_token_timeout_s if first is None else idle_s
            raise UpstreamFailure(
                "timeout",
                f"the language model did not send {what} within {limit:g} s",
                retryable=first is None,
                timeout=True,
            ) from None
        finally:
            if first is None:
                waiting.end(outcome="no_token")
            span.set(tokens=tokens)
            CHAT_TOKENS.inc(tokens)
            if first is not None and tokens > 1 and last > first:
                CHAT_TOKEN_RATE.observe((tokens - 1) / (last - first))
            await chunks.aclose()  # closes the upstream response when it stopped early
        if stream.finish_reason is None:
            raise UpstreamFailure(
                "stream_cut", "the language model's stream ended early", retryable=first is None
            )
        return usage

    async def _add(self, text: str, now: float) -> None:
        """Take a piece of the reply: send it now, or let the flush timer send it with
        what follows at the end of the coalescing window."""
        reply = self.reply
        async with reply.sending:
            delta = reply.stream.add(text, now)
            if delta is not None:
                await self._publish(delta)
                return
        due = reply.stream.due
        if due is not None and reply.flush_timer is None:
            loop = asyncio.get_running_loop()
            reply.flush_timer = loop.call_at(due, self._flush_due)

    def _flush_due(self) -> None:
        self.reply.flush_timer = None
        task = asyncio.create_task(self.flush())
        self.reply.flushes.add(task)
        task.add_done_callback(self.reply.flushes.discard)

    async def flush(self) -> None:
        """Send what is pending now (at the window's end, or when the reply ends)."""
        reply = self.reply
        if reply.flush_timer is not None:
            reply.flush_timer.cancel()
            reply.flush_timer = None
        async with reply.sending:
            delta = reply.stream.flush(asyncio.get_running_loop().time())
            if delta is not None:
                await self._publish(delta)

    async def _publish(self, delta: ChatDelta) -> None:
        self.reply.emit(delta)
        try:
            self.reply.last_published = await self.hub.publish(self.reply.topic, delta)
        except BrokerUnavailable:
            pass  # the reply is stored all the same; devices read it through sync
