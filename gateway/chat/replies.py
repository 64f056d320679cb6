"""The replies in progress on this process: what a reply is while it streams, who
watches it, and how it is stopped (by its patient's `chat.cancel` from any process, or at
shutdown)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal
from uuid import UUID, uuid4

from gateway.chat.stream import ReplyStream
from gateway.providers.base import UpstreamFailure
from gateway.realtime.hub import patient_topic
from protocol.codec import ProtocolError
from protocol.codes import ErrorCode
from protocol.frames import ChatDelta, ChatDone, Usage
from storage.changes import FinishReason

CANCEL_SIGNAL = "chat.cancel"  # hub signal: stop the reply whose id is the payload
CLOSE_WAIT_S = 5.0  # at shutdown, how long replies get to store what they have

ReplyEvent = ChatDelta | ChatDone | ProtocolError
Watcher = Callable[[ReplyEvent], None]


@dataclass(frozen=True)
class ChatRequest:
    patient_id: UUID
    thread_id: UUID
    text: str
    device_id: str  # whose client_message_id this is (PatientIdentity.device_key)
    svg_path: str | None = None
    client_message_id: str | None = None
    source: Literal["text", "voice"] = "text"
    received: float = field(default_factory=time.monotonic)


def failure_error(failure: UpstreamFailure) -> ProtocolError:
    """What the sender is told. Sending again can help unless the model refused the
    request itself (a 4xx other than 429: a bad key or model, a prompt it will not take),
    which a resend repeats."""
    if failure.kind == "internal":
        return ProtocolError(ErrorCode.INTERNAL, failure.message, retryable=True)
    code = ErrorCode.UPSTREAM_TIMEOUT if failure.timeout else ErrorCode.UPSTREAM_ERROR
    return ProtocolError(code, failure.message, retryable=failure.kind != "client_error")


class Reply:
    """One reply on its way: its stream, who watches it, and how to stop it. Its process
    holds the patient's topic while it runs, so cancel signals reach it from any process."""

    def __init__(self, request: ChatRequest, message_id: UUID, window_s: float) -> None:
        self.request = request
        self.message_id = message_id  # the user message it answers
        self.id = uuid4()  # the response id
        self.assistant_id = uuid4()  # the assistant message it becomes
        self.topic = patient_topic(request.patient_id)
        self.stream = ReplyStream(request.patient_id, request.thread_id, self.id, window_s=window_s)
        self.stop_reason: FinishReason | None = None
        self.embedding: asyncio.Task[list[float] | None] | None = None  # the message's
        self.relay: asyncio.Task[Usage | None] | None = None  # the model's stream
        # Deltas leave in seq order: a seq is given and its delta published under this lock,
        # by the relay or by the flush timer at the end of a coalescing window.
        self.sending = asyncio.Lock()
        self.flush_timer: asyncio.TimerHandle | None = None
        self.flushes: set[asyncio.Task[None]] = set()
        self.failure: UpstreamFailure | None = None
        self.released = False  # the thread's lease
        self.notify: Callable[[ProtocolError], None] | None = None  # the sender, for errors
        self.watchers: list[Watcher] = []
        # The hub's sequence number of the last delta published (None: none published).
        self.last_published: int | None = None

    def stop(self, reason: FinishReason) -> bool:
        """Stop the reply; whether it was still streaming (and so was stopped now)."""
        if self.stop_reason is not None or self.stream.finish_reason is not None:
            return False
        self.stop_reason = reason
        if self.relay is not None:
            self.relay.cancel()
        return True

    def emit(self, event: ReplyEvent) -> None:
        for watcher in tuple(self.watchers):
            watcher(event)


class LiveReplies:
    """This process's replies in progress: by response id, and the tasks that run them
    (which outlive the sockets that asked; the drain waits for them)."""

    def __init__(self) -> None:
        self.by_id: dict[UUID, Reply] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def cancel_signal(self, topic: str, payload: bytes) -> None:
        if len(payload) != 16:
            return
        reply = self.by_id.get(UUID(bytes=payload))
        if reply is not None and reply.topic == topic:  # only the patient's own devices
            reply.stop("cancelled")

    async def close(self) -> None:
        """Stop what still streams; each stores what it has (finish_reason: error)."""
        for reply in tuple(self.by_id.values()):
            reply.stop("error")
        if self.tasks:
            await asyncio.wait(tuple(self.tasks), timeout=CLOSE_WAIT_S)
