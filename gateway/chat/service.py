"""Chat: a patient's message in, a reply grounded in what they said before streamed out to
every device of the patient (over the socket and the original SSE route alike).

`accept` does what must happen before the sender hears back: it takes the thread's
reply lease (one reply per thread, across processes; else `busy`), stores the user
message through the change log (idempotent on the device's `client_message_id`; an
unknown thread is created) and acknowledges it, then starts the reply as a task of its
own (gateway/chat/run.py), which outlives the sending socket.

The user message is stored before anything can fail. A replayed `chat.send` of a
message that has no finished reply yet (the model failed, or the process died) asks for
the reply again without storing the message twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from uuid import UUID, uuid4, uuid5

from gateway import tracing
from gateway.chat.config import ChatConfig
from gateway.chat.replies import CANCEL_SIGNAL, ChatRequest, LiveReplies, Reply, Watcher
from gateway.chat.resume import Resumes
from gateway.chat.run import ReplyRun, embed
from gateway.providers import Models
from gateway.realtime.broker import BrokerUnavailable
from gateway.realtime.hub import Hub, patient_topic
from gateway.sync.writes import ChangeWriter
from protocol.codec import ProtocolError
from protocol.codes import ErrorCode
from protocol.frames import ChatMessage, ChatMessageBody, ServerFrame
from storage.changes import (
    Applied,
    Duplicate,
    MessageData,
    Mutation,
    Rejected,
    ThreadData,
    WriteResult,
)
from storage.database import Connection, Database
from storage.replies import claim_reply, sent_message, streaming_replies

log = logging.getLogger(__name__)

TITLE_CHARS = 60  # a thread created by chat.send is titled with the message's start


class ChatService:
    def __init__(
        self, config: ChatConfig, *, db: Database, hub: Hub, writer: ChangeWriter, models: Models
    ) -> None:
        self.config = config
        self.db = db
        self.hub = hub
        self.writer = writer
        self.models = models
        self.replies = LiveReplies()
        self.resumes = Resumes(db, hub, self.replies)
        hub.on_signal(CANCEL_SIGNAL, self.replies.cancel_signal)

    async def accept(
        self,
        request: ChatRequest,
        *,
        ack: Callable[[UUID | None], None],
        notify: Callable[[ProtocolError], None] | None = None,
        watcher: Watcher | None = None,
    ) -> Reply | ProtocolError | None:
        """Store and acknowledge the message, start its reply; the reply, or the error
        that refused the message (nothing stored), or None for a replay of an answered
        message.

        `ack` is called once the message is stored, with the response id (None when no
        reply follows), before `chat.message` is published.
        """
        with tracing.span(
            "chat.send", patient_id=str(request.patient_id), thread_id=str(request.thread_id)
        ) as span:
            accepted = await self._accept(request, ack, notify, watcher)
            if isinstance(accepted, Reply):
                span.set(response_id=str(accepted.id), outcome="accepted")
            else:
                span.set(outcome="refused" if accepted is not None else "replay")
            return accepted

    async def _accept(
        self,
        request: ChatRequest,
        ack: Callable[[UUID | None], None],
        notify: Callable[[ProtocolError], None] | None,
        watcher: Watcher | None,
    ) -> Reply | ProtocolError | None:
        message_id = self._message_id(request)
        reply = Reply(request, message_id, self.config.coalesce_s)
        async with self.db.acquire() as conn:
            claim = await claim_reply(
                conn,
                request.patient_id,
                request.thread_id,
                reply.id,
                self.config.reply_lease_s,
                self.config.max_replies_per_patient,
            )
        refusal = _refusal(claim.thread, claim.granted, claim.at_limit)
        if refusal is not None:
            if claim.granted:
                await self._run(reply).release_lease()
            return refusal

        # Known (and cancellable) from the moment its id can reach a device, in the ack.
        reply.notify = notify
        if watcher is not None:
            reply.watchers.append(watcher)
        self.replies.by_id[reply.id] = reply
        await self.hub.hold(reply.topic)
        run = self._run(reply)
        # The embedding does not depend on the write: fetch it while the message is stored.
        reply.embedding = asyncio.create_task(embed(self.models.embedder, request.text, "message"))
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
            # The device's earlier change under that id was not this message (or not this
            # text: a new message needs a new id).
            if sent is None or isinstance(outcome, Duplicate) and not outcome.same:
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
            await self.writer.write(
                request.patient_id,
                mutations,
                device_id=request.device_id,
                after_commit=after_commit,
            )
        except BaseException:
            await run.let_go()
            raise
        if refused is not None or answered:
            await run.let_go()
            return refused
        self.replies.start(run.run())
        return reply

    async def cancel(self, patient_id: UUID, response_id: UUID) -> bool:
        """Stop a reply of this patient's, streaming on this process or another; whether
        one was streaming (and is told to stop). Cancelling a reply that has ended (or
        never existed) changes nothing."""
        reply = self.replies.by_id.get(response_id)
        if reply is not None:
            return reply.request.patient_id == patient_id and reply.stop("cancelled")
        async with self.db.acquire() as conn:
            if response_id not in await streaming_replies(conn, patient_id):
                return False
        try:
            await self.hub.signal(patient_topic(patient_id), CANCEL_SIGNAL, response_id.bytes)
        except BrokerUnavailable:
            return False  # the other process cannot be reached; its reply runs to its end
        return True

    def in_flight(self) -> set[asyncio.Task[None]]:
        """The replies still running (they outlive their sockets; the drain waits)."""
        return set(self.replies.tasks)

    async def close(self) -> None:
        await self.replies.close()

    def _run(self, reply: Reply) -> ReplyRun:
        return ReplyRun(
            reply,
            self.config,
            db=self.db,
            hub=self.hub,
            writer=self.writer,
            models=self.models,
            live=self.replies,
        )

    def _message_id(self, request: ChatRequest) -> UUID:
        """A replayed chat.send (same device, same client_message_id) names the same
        message."""
        if request.client_message_id is None:
            return uuid4()
        key = f"{request.patient_id}:{request.device_id}:{request.client_message_id}"
        return uuid5(self.config.message_ids, key)


def _refusal(thread: str, granted: bool, at_limit: bool) -> ProtocolError | None:
    if thread == "other_patient":
        return ProtocolError(
            ErrorCode.FORBIDDEN, "thread_id: the thread belongs to another patient"
        )
    if thread == "deleted":
        return ProtocolError(ErrorCode.CONFLICT, "thread_id: the thread was deleted")
    if not granted and at_limit:
        return ProtocolError(
            ErrorCode.BUSY,
            "patient_id: as many replies as allowed are streaming for this patient",
            retryable=True,
        )
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
