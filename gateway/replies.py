"""The replies in progress on this process: what a reply is while it streams, who
watches it, and how it is stopped (by its patient's `chat.cancel` from any process, or at
shutdown)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal
from uuid import UUID, uuid4

from gateway.hub import patient_topic
from gateway.reply import ReplyStream
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
    device_id: str  # whose client_message_id this is (see gateway.sync.device_key)
    svg_path: str | None = None
    client_message_id: str | None = None
    source: Literal["text", "voice"] = "text"
    received: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class UpstreamFailure(Exception):
    kind: str  # the metric label
    message: str
    retryable: bool  # by the gateway, before the first token
    timeout: bool = False

    def error(self) -> ProtocolError:
        """What the sender is told. Sending again can help unless the model refused the
        request itself (a 4xx other than 429: a bad key or model, a prompt it will not
        take), which a resend repeats."""
        if self.kind == "internal":
            return ProtocolError(ErrorCode.INTERNAL, self.message, retryable=True)
        code = ErrorCode.UPSTREAM_TIMEOUT if self.timeout else ErrorCode.UPSTREAM_ERROR
        return ProtocolError(code, self.message, retryable=self.kind != "client_error")


class Reply:
    """One reply on its way: its stream, who watches it, and how to stop it. Joined to
    the patient's topic while it runs, so cancel signals reach it from any process."""

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
        # Set once the broker has handed back the last delta this reply published: it has
        # then reached every process. Nothing published yet: nothing to wait for.
        self.fanned_out = asyncio.Event()
        self.fanned_out.set()
        self._echo: str | None = None  # the `seq` of the delta awaited back, as encoded
        self._id_text = str(self.id)

    def stop(self, reason: FinishReason) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            if self.relay is not None:
                self.relay.cancel()

    def emit(self, event: ReplyEvent) -> None:
        for watcher in tuple(self.watchers):
            watcher(event)

    def expect_echo(self, seq: int) -> None:
        self._echo = f'"seq":{seq},'
        self.fanned_out.clear()

    def no_echo(self) -> None:
        """The delta could not be published: none will come back."""
        self._echo = None
        self.fanned_out.set()

    # The hub's listener interface: frames on the topic are for sockets; the reply only
    # watches for its own last delta coming back.
    def deliver(self, text: str) -> None:
        echo = self._echo
        if (
            echo is not None
            and text.startswith('{"type":"chat.delta"')
            and echo in text
            and self._id_text in text
        ):
            self.no_echo()

    def broker_recovered(self) -> None:
        pass


class Replies:
    """This process's replies in progress."""

    def __init__(self) -> None:
        self.live: dict[UUID, Reply] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def cancel_signal(self, topic: str, payload: bytes) -> None:
        if len(payload) != 16:
            return
        reply = self.live.get(UUID(bytes=payload))
        if reply is not None and reply.topic == topic:  # only the patient's own devices
            reply.stop("cancelled")

    async def close(self) -> None:
        """Stop what still streams; each stores what it has (finish_reason: error)."""
        for reply in tuple(self.live.values()):
            reply.stop("error")
        if self.tasks:
            await asyncio.wait(tuple(self.tasks), timeout=CLOSE_WAIT_S)
