"""Chat: a patient's message in, a reply grounded in what they said before streamed out to
every device of the patient (over the socket and the original SSE route alike).

`send` does what must happen before the sender hears back: it takes the thread's reply
lease (one reply per thread, across processes; else `busy`), stores the user message
through the change log (idempotent on the device's `client_message_id`; an unknown thread
is created) and acknowledges it, then starts the reply as a task of its own. The reply
outlives the sending socket: embed the text, retrieve the patient's nearest memories,
build the prompt, relay the model's stream as coalesced `chat.delta` frames, and store
the reply (with its finish reason) and both embeddings before `chat.done` goes out.

Failures: retries with backoff on 429, 5xx and connection failures, only while no token
has arrived; after that, a failure ends the reply with `finish_reason: error`, keeping
what arrived. The user message is stored before anything can fail. A replayed
`chat.send` of a message that has no finished reply yet (the model failed, or the
process died) asks for the reply again without storing the message twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import replace
from typing import TYPE_CHECKING
from uuid import UUID, uuid4, uuid5

import openai

from gateway.broker import BrokerUnavailable
from gateway.changefeed import write_changes
from gateway.hub import patient_topic
from gateway.metrics import (
    CHAT_FIRST_TOKEN_ADDED,
    CHAT_FIRST_TOKEN_UPSTREAM,
    CHAT_REPLIES,
    CHAT_TOKEN_RATE,
    CHAT_TOKENS,
    RETRIEVAL_LATENCY,
    UPSTREAM_ERRORS,
)
from gateway.prompt import Turn, build_messages
from gateway.providers.openai_compat import ChatChunk, StreamError
from gateway.replies import (
    CANCEL_SIGNAL,
    ChatRequest,
    Reply,
    UpstreamFailure,
    Watcher,
)
from gateway.sync import device_key
from protocol.codec import ProtocolError
from protocol.codes import ErrorCode
from protocol.frames import (
    Ack,
    ChatCancel,
    ChatDelta,
    ChatDone,
    ChatMessage,
    ChatMessageBody,
    ChatSend,
    ClientFrame,
    ServerFrame,
    Usage,
)
from storage.changes import (
    Applied,
    FinishReason,
    MessageData,
    Mutation,
    Rejected,
    ThreadData,
    WriteResult,
)
from storage.database import Connection
from storage.memories import nearest_memories, store_memory
from storage.replies import (
    claim_reply,
    recent_turns,
    release_reply,
    renew_reply,
    sent_message,
)

if TYPE_CHECKING:
    from gateway.runtime import Runtime
    from gateway.session import Session

log = logging.getLogger(__name__)

TITLE_CHARS = 60  # a thread created by chat.send is titled with the message's start
RECENT_TURNS = 20
MAX_BACKOFF_S = 8.0
ECHO_WAIT_S = 0.05  # at most, for the last delta to come back from the broker


# ---- accepting a message --------------------------------------------------------------


async def send(
    runtime: Runtime,
    request: ChatRequest,
    *,
    ack: Callable[[UUID | None], None],
    notify: Callable[[ProtocolError], None] | None = None,
    watcher: Watcher | None = None,
) -> Reply | ProtocolError | None:
    """Store and acknowledge the message, start its reply; the reply, or the error that
    refused the message (nothing stored), or None for a replay of an answered message.

    `ack` is called once the message is stored, with the response id (None when no reply
    follows), before `chat.message` is published.
    """
    settings = runtime.settings
    message_id = _message_id(runtime, request)
    reply = Reply(request, message_id, settings.chat_coalesce_ms / 1000)
    async with runtime.pool.acquire() as conn:
        claim = await claim_reply(
            conn, request.patient_id, request.thread_id, reply.id, settings.reply_lease_s
        )
    refusal = _refusal(claim.thread, claim.granted)
    if refusal is not None:
        if claim.granted:
            await _release(runtime, reply)
        return refusal

    # Known (and cancellable) from the moment its id can reach a device, in the ack.
    reply.notify = notify
    if watcher is not None:
        reply.watchers.append(watcher)
    runtime.replies.live[reply.id] = reply
    await runtime.hub.join(reply.topic, reply)
    # The embedding does not depend on the write: fetch it while the message is stored.
    reply.embedding = asyncio.create_task(_embed(runtime, request.text, "message"))
    refused: ProtocolError | None = None
    answered = False

    async def after_commit(conn: Connection, result: WriteResult) -> list[ServerFrame]:
        nonlocal refused, answered
        outcome = result.results[-1]
        if isinstance(outcome, Rejected):
            refused = ProtocolError(outcome.code, outcome.message)
            return []
        if isinstance(outcome, Applied):
            ack(reply.id)
            assert outcome.change.data is not None
            return [_user_message(request, message_id, outcome.change.data["created_at"])]
        # A replay: the same device sent this client_message_id before.
        sent = await sent_message(conn, request.patient_id, message_id)
        if sent is None:  # the device's earlier change under that id was not this message
            refused = ProtocolError(
                ErrorCode.CONFLICT,
                "client_message_id: this device already used it for another change",
            )
            return []
        answered = sent.answered or sent.deleted
        ack(None if answered else reply.id)
        # The sender sees the message before the reply, this time too.
        return [] if answered else [_user_message(request, message_id, sent.created_at)]

    mutations = [_user_mutation(request, message_id)]
    if claim.thread == "missing":
        title = ThreadData(title=request.text[:TITLE_CHARS])
        mutations.insert(0, Mutation("thread", "upsert", request.thread_id, title))
    try:
        await write_changes(
            runtime,
            request.patient_id,
            mutations,
            device_id=request.device_id,
            after_commit=after_commit,
        )
    except BaseException:
        await _let_go(runtime, reply)
        raise
    if refused is not None or answered:
        await _let_go(runtime, reply)
        return refused

    replies = runtime.replies
    task = asyncio.create_task(_run(runtime, reply))
    replies.tasks.add(task)
    task.add_done_callback(replies.tasks.discard)
    return reply


async def cancel(runtime: Runtime, patient_id: UUID, response_id: UUID) -> None:
    """Stop a reply of this patient's, streaming on this process or another. Cancelling a
    reply that has ended (or never existed) changes nothing."""
    reply = runtime.replies.live.get(response_id)
    if reply is not None:
        if reply.request.patient_id == patient_id:
            reply.stop("cancelled")
        return
    try:
        await runtime.hub.signal(patient_topic(patient_id), CANCEL_SIGNAL, response_id.bytes)
    except BrokerUnavailable:
        pass  # the other process cannot be reached; its reply runs to its end


def _message_id(runtime: Runtime, request: ChatRequest) -> UUID:
    """A replayed chat.send (same device, same client_message_id) names the same message."""
    if request.client_message_id is None:
        return uuid4()
    key = f"{request.patient_id}:{request.device_id}:{request.client_message_id}"
    return uuid5(runtime.message_ids, key)


def _refusal(thread: str, granted: bool) -> ProtocolError | None:
    if thread == "other_patient":
        return ProtocolError(
            ErrorCode.FORBIDDEN, "thread_id: the thread belongs to another patient"
        )
    if thread == "deleted":
        return ProtocolError(ErrorCode.CONFLICT, "thread_id: the thread was deleted")
    if not granted:
        return ProtocolError(
            ErrorCode.BUSY, "thread_id: a reply is already streaming in this thread", retryable=True
        )
    return None


def _user_mutation(request: ChatRequest, message_id: UUID) -> Mutation:
    data = MessageData(
        thread_id=request.thread_id,
        role="user",
        content=request.text,
        svg_path=request.svg_path,
        source=request.source,
    )
    # Its own namespace among the device's mutation ids: a sync.push id that happens to
    # equal a client_message_id is another change.
    key = None if request.client_message_id is None else f"chat:{request.client_message_id}"
    return Mutation("message", "upsert", message_id, data, key)


def _user_message(request: ChatRequest, message_id: UUID, created_at: object) -> ChatMessage:
    body = ChatMessageBody.model_validate(
        {
            "id": message_id,
            "role": "user",
            "content": request.text,
            "svg_path": request.svg_path,
            "source": request.source,
            "created_at": created_at,
            "device_id": request.device_id,
        }
    )
    return ChatMessage(patient_id=request.patient_id, thread_id=request.thread_id, message=body)


async def _release(runtime: Runtime, reply: Reply) -> None:
    async with runtime.pool.acquire() as conn:
        await release_reply(conn, reply.id)


async def _let_go(runtime: Runtime, reply: Reply) -> None:
    """Forget a reply that ended or never started: its registration, its embedding if
    still on its way, its topic, and its thread's lease unless already released."""
    runtime.replies.live.pop(reply.id, None)
    if reply.embedding is not None:
        reply.embedding.cancel()
    await runtime.hub.leave(reply.topic, reply)
    if not reply.released:
        try:
            await _release(runtime, reply)
        except Exception as exc:  # the lease expires by itself
            log.warning("releasing a reply lease failed: %s", type(exc).__name__)


# ---- the reply ----------------------------------------------------------------------


async def _run(runtime: Runtime, reply: Reply) -> None:
    renewer = asyncio.create_task(_renew_lease(runtime, reply))
    try:
        user_vector: list[float] | None = None
        usage: Usage | None = None
        try:
            user_vector, messages = await _prepare(runtime, reply)
            usage = await _relay_until_stopped(runtime, reply, messages)
        except Exception as exc:
            # Not the model's fault (the database, a bug): end the reply all the same.
            log.error("reply failed: %s", type(exc).__name__, exc_info=exc)
            reply.failure = UpstreamFailure("internal", "the reply failed", retryable=False)
            reply.stream.finish("error")
        await _finish(runtime, reply, user_vector, usage)
    except Exception as exc:
        log.error("storing a reply failed: %s", type(exc).__name__, exc_info=exc)
    finally:
        renewer.cancel()
        await _let_go(runtime, reply)


async def _embed(runtime: Runtime, text: str, what: str) -> list[float] | None:
    """The text's embedding, or None when the embedding server fails (the reply goes on
    without memories rather than not at all)."""
    try:
        [vector] = await runtime.models.embedder.embed([text])
        return vector
    except Exception as exc:
        UPSTREAM_ERRORS.labels("embedding").inc()
        log.warning("embedding the %s failed: %s", what, type(exc).__name__)
        return None


async def _relay_until_stopped(
    runtime: Runtime, reply: Reply, messages: list[dict[str, str]]
) -> Usage | None:
    """The relay as a task of its own, so that stopping the reply (cancel, shutdown) can
    cancel it wherever it waits; what arrived until then stays in the stream."""
    if reply.stop_reason is None:
        reply.relay = asyncio.create_task(_relay(runtime, reply, messages))
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


async def _renew_lease(runtime: Runtime, reply: Reply) -> None:
    lease_s = runtime.settings.reply_lease_s
    while True:
        await asyncio.sleep(lease_s / 3)
        try:
            async with runtime.pool.acquire() as conn:
                await renew_reply(conn, reply.id, lease_s)
        except Exception as exc:
            log.warning("renewing a reply lease failed: %s", type(exc).__name__)


async def _prepare(
    runtime: Runtime, reply: Reply
) -> tuple[list[float] | None, list[dict[str, str]]]:
    """Read the thread's recent turns and the patient's memories nearest to the
    message's embedding, and build the prompt."""
    settings, request = runtime.settings, reply.request
    assert reply.embedding is not None
    async with runtime.pool.acquire() as conn:
        recent = await recent_turns(
            conn, request.thread_id, before=reply.message_id, limit=RECENT_TURNS
        )
        vector = await reply.embedding
        memories = []
        if vector is not None and settings.retrieval_k > 0:
            started = time.perf_counter()
            memories = await nearest_memories(
                conn,
                request.patient_id,
                vector,
                k=settings.retrieval_k,
                min_similarity=settings.retrieval_min_similarity,
                # What is already in the prompt as a recent turn is not a memory.
                exclude=[reply.message_id, *(turn.id for turn in recent)],
                exact_limit=runtime.exact_limit,
            )
            RETRIEVAL_LATENCY.observe(time.perf_counter() - started)
    messages = build_messages(
        request.text,
        memories=memories,
        recent=[Turn(turn.role, turn.content) for turn in recent],
        svg_path=request.svg_path,
        budget_tokens=settings.chat_history_tokens,
    )
    return vector, messages


async def _relay(runtime: Runtime, reply: Reply, messages: list[dict[str, str]]) -> Usage | None:
    """Stream the model's reply to the patient's topic, retrying while nothing arrived.
    Runs as a task of its own: stopping the reply cancels it (which closes the upstream)."""
    settings = runtime.settings
    attempt = 0
    while True:
        try:
            return await _relay_once(runtime, reply, messages)
        except UpstreamFailure as failure:
            UPSTREAM_ERRORS.labels(failure.kind).inc()
            log.warning("model request failed: %s (attempt %d)", failure.kind, attempt + 1)
            if reply.stream.text or not failure.retryable or attempt >= settings.chat_retries:
                reply.failure = failure
                reply.stream.finish("error")
                return None
            delay = min(MAX_BACKOFF_S, settings.chat_retry_backoff_s * 2**attempt)
            attempt += 1
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))


async def _relay_once(
    runtime: Runtime, reply: Reply, messages: list[dict[str, str]]
) -> Usage | None:
    settings, stream = runtime.settings, reply.stream
    loop = asyncio.get_running_loop()
    idle_s = settings.chat_idle_timeout_s
    sent_at = time.monotonic()
    rescheduled = loop.time()
    first: float | None = None
    last = sent_at
    tokens = 0
    usage: Usage | None = None
    chunks: AsyncGenerator[ChatChunk, None] = runtime.models.chat.stream(messages)
    try:
        async with asyncio.timeout(settings.chat_first_token_timeout_s) as watchdog:
            async for chunk in chunks:
                now = loop.time()
                last = time.monotonic()
                if first is not None and now - rescheduled > idle_s / 10:
                    # Moving the deadline costs a timer; once per tenth of the timeout will do.
                    watchdog.reschedule(now + idle_s)
                    rescheduled = now
                if chunk.delta:
                    tokens += 1
                    if first is None:
                        first, rescheduled = last, now
                        watchdog.reschedule(now + idle_s)
                        CHAT_FIRST_TOKEN_UPSTREAM.observe(first - sent_at)
                    await _add(runtime, reply, chunk.delta, now)
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
        limit = settings.chat_first_token_timeout_s if first is None else idle_s
        raise UpstreamFailure(
            "timeout",
            f"the language model did not send {what} within {limit:g} s",
            retryable=first is None,
            timeout=True,
        ) from None
    except (UpstreamFailure, asyncio.CancelledError):
        raise
    except Exception as exc:
        raise _classify(exc) from exc
    finally:
        CHAT_TOKENS.inc(tokens)
        if first is not None and tokens > 1 and last > first:
            CHAT_TOKEN_RATE.observe((tokens - 1) / (last - first))
        await chunks.aclose()  # closes the upstream response when it stopped early
    if stream.finish_reason is None:
        raise UpstreamFailure(
            "stream_cut", "the language model's stream ended early", retryable=first is None
        )
    return usage


async def _add(runtime: Runtime, reply: Reply, text: str, now: float) -> None:
    """Take a piece of the reply: send it now, or let the flush timer send it with what
    follows at the end of the coalescing window."""
    async with reply.sending:
        delta = reply.stream.add(text, now)
        if delta is not None:
            await _publish(runtime, reply, delta)
            return
    due = reply.stream.due
    if due is not None and reply.flush_timer is None:
        loop = asyncio.get_running_loop()
        reply.flush_timer = loop.call_at(due, _flush_due, runtime, reply)


def _flush_due(runtime: Runtime, reply: Reply) -> None:
    reply.flush_timer = None
    task = asyncio.create_task(_flush(runtime, reply))
    reply.flushes.add(task)
    task.add_done_callback(reply.flushes.discard)


async def _flush(runtime: Runtime, reply: Reply) -> None:
    async with reply.sending:
        delta = reply.stream.flush(asyncio.get_running_loop().time())
        if delta is not None:
            await _publish(runtime, reply, delta)


def _classify(exc: Exception) -> UpstreamFailure:
    if isinstance(exc, UpstreamFailure):
        return exc
    if isinstance(exc, StreamError):
        return UpstreamFailure("stream_cut", "the language model's stream failed", True)
    if isinstance(exc, openai.RateLimitError):
        return UpstreamFailure("rate_limited", "the language model is rate limited (429)", True)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        kind = "server_error" if status >= 500 else "client_error"
        return UpstreamFailure(kind, f"the language model answered {status}", status >= 500)
    if isinstance(exc, openai.APITimeoutError):
        return UpstreamFailure("timeout", "the language model timed out", True, timeout=True)
    if isinstance(exc, openai.APIConnectionError):
        return UpstreamFailure("connection", "the language model could not be reached", True)
    return UpstreamFailure("stream_cut", "the language model's stream failed", True)


async def _publish(runtime: Runtime, reply: Reply, frame: ChatDelta | ChatDone) -> None:
    reply.emit(frame)
    if isinstance(frame, ChatDelta):
        reply.expect_echo(frame.seq)
    try:
        await runtime.hub.publish(reply.topic, frame)
    except BrokerUnavailable:
        reply.no_echo()  # the reply is stored all the same; devices read it through sync


async def _finish(
    runtime: Runtime, reply: Reply, user_vector: list[float] | None, usage: Usage | None
) -> None:
    """Send what is pending, store the reply and both embeddings, then `chat.done`."""
    request, stream = reply.request, reply.stream
    if reply.flush_timer is not None:
        reply.flush_timer.cancel()
        reply.flush_timer = None
    await _flush(runtime, reply)
    # The last words reach every process before the end-of-reply work (embedding, storing)
    # takes the cores that the broker, the other processes and the sockets need for them.
    try:
        async with asyncio.timeout(ECHO_WAIT_S):
            await reply.fanned_out.wait()
    except TimeoutError:
        pass
    reason: FinishReason = stream.finish_reason or "error"  # type: ignore[assignment]
    text = stream.text
    reply_vector = await _embed(runtime, text, "reply") if text else None
    if reply.failure is not None:
        error = reply.failure.error()
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
            for message_id, vector in (
                (reply.message_id, user_vector),
                (reply.assistant_id, reply_vector),
            ):
                if vector is not None:
                    await store_memory(conn, request.patient_id, message_id, vector)
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
    await write_changes(
        runtime,
        request.patient_id,
        [Mutation("message", "upsert", reply.assistant_id, data)],
        device_id=None,
        after_commit=after_commit,
    )
    CHAT_REPLIES.labels(reason).inc()


# ---- the socket's handlers ---------------------------------------------------------------


async def handle_send(session: Session, frame: ClientFrame) -> None:
    assert isinstance(frame, ChatSend)
    identity = session.identity
    assert identity.patient_id is not None  # chat.send is for patients only
    request = ChatRequest(
        patient_id=identity.patient_id,
        thread_id=frame.thread_id,
        text=frame.text,
        device_id=device_key(identity),
        svg_path=frame.svg_path,
        client_message_id=frame.client_message_id,
    )
    outcome = await send(
        session.runtime,
        request,
        ack=lambda response_id: session.send(Ack(ref=frame.id, response_id=response_id)),
        notify=lambda error: session.send_error(replace(error, ref=frame.id)),
    )
    if isinstance(outcome, ProtocolError):
        session.send_error(replace(outcome, ref=frame.id))


async def handle_cancel(session: Session, frame: ClientFrame) -> None:
    assert isinstance(frame, ChatCancel)
    patient_id = session.identity.patient_id
    assert patient_id is not None
    await cancel(session.runtime, patient_id, frame.response_id)
    session.send(Ack(ref=frame.id))
