"""One reply's run, from the stored message to `chat.done`: read the thread's recent turns
and the patient's nearest memories, build the prompt, relay the model's stream
(gateway/chat/relay.py), then store the reply (with its finish reason) and both
embeddings. The run holds the thread's lease, renewed while it streams.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta

from gateway import tracing
from gateway.chat.config import ChatConfig
from gateway.chat.metrics import CHAT_REPLIES, RETRIEVAL_LATENCY, UPSTREAM_ERRORS
from gateway.chat.prompt import Turn, build_messages
from gateway.chat.relay import Relay
from gateway.chat.replies import LiveReplies, Reply, failure_error
from gateway.providers import Models
from gateway.providers.base import Embedder, UpstreamFailure
from gateway.realtime.hub import Hub
from gateway.sync.writes import ChangeWriter
from protocol.frames import ChatDone, ServerFrame, Usage
from storage.changes import Applied, FinishReason, MessageData, Mutation, WriteResult
from storage.database import Connection, Database, DatabaseUnavailable
from storage.memories import nearest_memories, store_memory
from storage.pain_reports import recent_pain_reports
from storage.replies import recent_turns, release_reply, renew_reply
from storage.summaries import nearest_summaries

log = logging.getLogger(__name__)

RECENT_TURNS = 20
# The pain reports in a prompt: enough to see a trend over the last weeks.
PAIN_REPORTS = 10
PAIN_REPORTS_WITHIN = timedelta(days=30)
SUMMARIES = 2  # summaries of the patient's other threads nearest to the message
ECHO_WAIT_S = 0.05  # at most, for the last delta to come back from the broker
# A streamed reply whose database went away (a restart, a failover) is stored once it is
# back, trying for this long: its text exists only here. The lease is renewed meanwhile.
STORE_RETRY_S = 30.0


async def embed(embedder: Embedder, text: str, what: str) -> list[float] | None:
    """The text's embedding, or None when the embedding server fails (the reply goes on
    without memories rather than not at all)."""
    with tracing.span("chat.embed", what=what, model=embedder.name) as span:
        try:
            [vector] = await embedder.embed([text])
            return vector
        except Exception as exc:
            UPSTREAM_ERRORS.labels("embedding").inc()
            log.warning("embedding the %s failed: %s", what, type(exc).__name__)
            span.set(outcome=type(exc).__name__)
            return None


class ReplyRun:
    def __init__(
        self,
        reply: Reply,
        config: ChatConfig,
        *,
        db: Database,
        hub: Hub,
        writer: ChangeWriter,
        models: Models,
        live: LiveReplies,
    ) -> None:
        self.reply = reply
        self.config = config
        self.db = db
        self.hub = hub
        self.writer = writer
        self.models = models
        self.live = live
        self.relay = Relay(reply, config, hub, models.chat)

    async def run(self) -> None:
        reply = self.reply
        with tracing.span("chat.reply", response_id=str(reply.id)) as span:
            await self._run()
            span.set(finish_reason=reply.stream.finish_reason or "error")

    async def _run(self) -> None:
        reply = self.reply
        renewer = asyncio.create_task(self._renew_lease())
        try:
            user_vector: list[float] | None = None
            usage: Usage | None = None
            try:
                user_vector, messages = await self._prepare()
                usage = await self._relay_until_stopped(messages)
            except Exception as exc:
                # Not the model's fault (the database, a bug): end the reply all the same.
                log.error("reply failed: %s", type(exc).__name__, exc_info=exc)
                reply.failure = UpstreamFailure("internal", "the reply failed", retryable=False)
                reply.stream.finish("error")
            await self._finish(user_vector, usage)
        except Exception as exc:
            log.error("storing a reply failed: %s", type(exc).__name__, exc_info=exc)
        finally:
            renewer.cancel()
            await self.let_go()

    async def release_lease(self) -> None:
        async with self.db.acquire() as conn:
            await release_reply(conn, self.reply.id)

    async def let_go(self) -> None:
        """Forget a reply that ended or never started: its registration, its embedding if
        still on its way, its hold on the topic, and its thread's lease unless already
        released."""
        reply = self.reply
        self.live.by_id.pop(reply.id, None)
        if reply.embedding is not None:
            reply.embedding.cancel()
        await self.hub.release(reply.topic)
        if not reply.released:
            try:
                await self.release_lease()
            except Exception as exc:  # the lease expires by itself
                log.warning("releasing a reply lease failed: %s", type(exc).__name__)

    async def _renew_lease(self) -> None:
        lease_s = self.config.reply_lease_s
        while True:
            await asyncio.sleep(lease_s / 3)
            try:
                async with self.db.acquire() as conn:
                    await renew_reply(conn, self.reply.id, lease_s)
            except Exception as exc:
                log.warning("renewing a reply lease failed: %s", type(exc).__name__)

    async def _prepare(self) -> tuple[list[float] | None, list[dict[str, str]]]:
        """Read the thread's recent turns and the patient's memories nearest to the
        message's embedding, and build the prompt."""
        config, reply = self.config, self.reply
        request = reply.request
        assert reply.embedding is not None
        # No connection is held while the embedding call is on its way (a slow model
        # server must not take the pool from every other patient).
        now = datetime.now(UTC)
        async with self.db.acquire() as conn:
            recent = await recent_turns(
                conn, request.thread_id, before=reply.message_id, limit=RECENT_TURNS
            )
            reports = await recent_pain_reports(
                conn, request.patient_id, limit=PAIN_REPORTS, since=now - PAIN_REPORTS_WITHIN
            )
        vector = await reply.embedding
        memories = []
        summaries = []
        if vector is not None and config.retrieval_k > 0:
            started = time.perf_counter()
            with tracing.span("chat.retrieve") as span:
                async with self.db.acquire() as conn:
                    memories = await nearest_memories(
                        conn,
                        request.patient_id,
                        vector,
                        k=config.retrieval_k,
                        min_similarity=config.retrieval_min_similarity,
                        # What is already in the prompt as a recent turn is not a memory.
                        exclude=[reply.message_id, *(turn.id for turn in recent)],
                    )
                    # Earlier conversations as their summaries say them (sql/0012).
                    summaries = await nearest_summaries(
                        conn, request.patient_id, vector, k=SUMMARIES, exclude=request.thread_id
                    )
                span.set(memories=len(memories))
            RETRIEVAL_LATENCY.observe(time.perf_counter() - started)
        messages = build_messages(
            request.text,
            memories=memories,
            recent=[Turn(turn.role, turn.content) for turn in recent],
            svg_path=request.svg_path,
            pain_reports=reports,
            summaries=summaries,
            today=now,
            budget_tokens=config.history_tokens,
        )
        return vector, messages

    async def _relay_until_stopped(self, messages: list[dict[str, str]]) -> Usage | None:
        """The relay as a task of its own, so that stopping the reply (cancel, shutdown)
        can cancel it wherever it waits; what arrived until then stays in the stream."""
        reply = self.reply
        if reply.stop_reason is None:
            reply.relay = asyncio.create_task(self.relay.run(messages))
            try:
                return await reply.relay
            except asyncio.CancelledError:
                if not reply.relay.cancelled() or reply.stop_reason is None:
                    raise  # this task itself is being cancelled
            finally:
                reply.relay = None
        assert reply.stop_reason is not None
        reply.stream.finish(reply.stop_reason)
        return None

    async def _finish(self, user_vector: list[float] | None, usage: Usage | None) -> None:
        """Send what is pending, store the reply and both embeddings, then `chat.done`."""
        with tracing.span("chat.done", finish_reason=self.reply.stream.finish_reason or "error"):
            await self._store(user_vector, usage)

    async def _store(self, user_vector: list[float] | None, usage: Usage | None) -> None:
        reply = self.reply
        request, stream = reply.request, reply.stream
        await self.relay.flush()
        # The last words reach every process before the end-of-reply work (embedding,
        # storing) takes the cores that the broker, the other processes and the sockets
        # need for them.
        if reply.last_published is not None:
            await self.hub.came_back(reply.topic, reply.last_published, ECHO_WAIT_S)
        reason: FinishReason = stream.finish_reason or "error"  # type: ignore[assignment]
        text = stream.text
        reply_vector = await embed(self.models.embedder, text, "reply") if text else None
        if reply.failure is not None:
            error = failure_error(reply.failure)
            if reply.notify is not None:
                reply.notify(error)
            reply.emit(error)
        done = ChatDone(
            patient_id=request.patient_id,
            thread_id=request.thread_id,
            response_id=reply.id,
            message_id=reply.assistant_id,
            finish_reason=reason,
            usage=usage,
        )

        async def after_commit(conn: Connection, result: WriteResult) -> list[ServerFrame]:
            # The thread is free before chat.done goes out: the next message is not busy.
            await release_reply(conn, reply.id)
            reply.released = True
            if isinstance(result.results[0], Applied):
                for message_id, vector, embedded in (
                    (reply.message_id, user_vector, request.text),
                    (reply.assistant_id, reply_vector, text),
                ):
                    if vector is not None:
                        await store_memory(conn, request.patient_id, message_id, vector, embedded)
            reply.emit(done)
            return [done]

        data = MessageData(
            thread_id=request.thread_id,
            role="assistant",
            content=text,
            source="text",
            finish_reason=reason,
            reply_to=reply.message_id,
        )
        deadline, pause = time.monotonic() + STORE_RETRY_S, 0.1
        while True:
            try:
                await self.writer.write(
                    request.patient_id,
                    [Mutation("message", "upsert", reply.assistant_id, data)],
                    device_id=None,
                    after_commit=after_commit,
                )
                break
            except DatabaseUnavailable:
                if time.monotonic() + pause > deadline:
                    raise
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
        CHAT_REPLIES.labels(reason).inc()
