"""Topic -> local listeners, with one broker subscription per topic that has any.

Topics are `patient:<id>`. A frame is encoded once per publish and travels as one
message; each process hands the same text to each of its local listeners. The envelope
carries, ahead of the JSON: the publish time (for the fan-out latency metric), the origin
time (what caused the frame, e.g. the push behind a sync.delta), the publishing hub's id
and its sequence number for this publish, and the frame type (for the frames-out metric).
When traces are on and a span is current, the envelope starts with a marker byte and the
span's context (gateway/tracing.py), and the receiving process's delivery is its child.
Untraced envelopes are unchanged, so processes of the previous release read them during
a rolling upgrade; turn traces on once every process runs this release.

The publisher id and sequence let a publisher know that its own message has come back
from the broker, i.e. has reached every subscribed process (`came_back`): a broker
delivers one publisher's messages in the order they were published.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import struct
import time
from collections.abc import Callable, Collection
from typing import Protocol
from uuid import UUID

from gateway import tracing
from gateway.realtime.broker import Broker, BrokerUnavailable
from gateway.realtime.broker.failures import BACKOFF_MAX_S, BACKOFF_MIN_S, stop
from gateway.realtime.metrics import FANOUT_LATENCY, FRAMES_OUT, SYNC_PUSH_TO_DELIVERY
from protocol.codec import encode
from protocol.frames import ServerFrame

log = logging.getLogger(__name__)

# Publish time, origin time (unix seconds), publisher id, publish sequence, then the
# length of the frame type's name.
_HEADER = struct.Struct(">ddQQB")
# A traced envelope: this byte, the trace context, then the header. An untraced one starts
# with a big-endian double of the current time, whose first byte is never 1.
_TRACED = 1

# Signals travel like frames but are handled by the process, not sent to sockets:
# (topic, payload).
SignalHandler = Callable[[str, bytes], None]


class Listener(Protocol):
    def deliver(self, text: str) -> None:
        """Queue one encoded frame; must not block."""

    def broker_recovered(self) -> None:
        """The fan-out link was down: deliveries may have been missed."""


def patient_topic(patient_id: UUID) -> str:
    return f"patient:{patient_id}"


def envelope(
    frame_type: str,
    payload: bytes,
    origin: float | None = None,
    publisher: int = 0,
    seq: int = 0,
    trace: bytes = b"",
) -> bytes:
    kind = frame_type.encode()
    now = time.time()
    header = _HEADER.pack(now, origin or now, publisher, seq, len(kind))
    if trace:
        return bytes((_TRACED,)) + trace + header + kind + payload
    return header + kind + payload


class Hub:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.id = secrets.randbits(64)  # this process's publisher id
        self._topics: dict[str, set[Listener]] = {}
        self._holds: dict[str, int] = {}  # topics kept subscribed without a listener
        self._subscribing: dict[str, asyncio.Task[None]] = {}
        self._signal_handlers: dict[str, SignalHandler] = {}
        self._published = 0  # sequence of this hub's last publish
        # By topic, the sequence of the last own publish the broker handed back.
        self._came_back: dict[str, int] = {}
        self._echo_waits: list[tuple[str, int, asyncio.Future[None]]] = []
        # Frames to publish once the broker takes publishes again, by topic (ordered: a
        # topic whose frame failed again goes to the back).
        self._announcements: dict[str, tuple[str, bytes]] = {}
        self._announcer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.broker.start(self._deliver, self._recovered)

    async def close(self) -> None:
        await stop(self._announcer)
        await self.broker.close()

    def on_signal(self, name: str, handler: SignalHandler) -> None:
        """Handle the signal `name` on topics this process is subscribed to."""
        self._signal_handlers[name] = handler

    def listeners(self, topic: str) -> frozenset[Listener]:
        return frozenset(self._topics.get(topic, ()))

    async def join(self, topic: str, listener: Listener) -> None:
        """Deliver `topic` to `listener`; once this returns, later publishes reach it."""
        self._topics.setdefault(topic, set()).add(listener)
        await self._subscribed(topic)

    async def leave(self, topic: str, listener: Listener) -> None:
        listeners = self._topics.get(topic)
        if listeners is None:
            return
        listeners.discard(listener)
        if not listeners:
            del self._topics[topic]
            await self._maybe_unsubscribe(topic)

    async def hold(self, topic: str) -> None:
        """Keep this process subscribed to `topic` (for its signals and for `came_back`)
        without receiving its frames; undone by `release`."""
        self._holds[topic] = self._holds.get(topic, 0) + 1
        await self._subscribed(topic)

    async def release(self, topic: str) -> None:
        count = self._holds.get(topic, 0) - 1
        if count > 0:
            self._holds[topic] = count
            return
        self._holds.pop(topic, None)
        await self._maybe_unsubscribe(topic)

    async def publish(self, topic: str, frame: ServerFrame, origin: float | None = None) -> int:
        """Publish `frame`; returns the publish's sequence number (see `came_back`)."""
        return await self._publish(topic, frame.type, encode(frame), origin)

    async def signal(self, topic: str, name: str, payload: bytes = b"") -> None:
        await self._publish(topic, name, payload, None)

    async def came_back(self, topic: str, seq: int, timeout: float) -> bool:
        """Wait until this hub's publish `seq` on `topic` has come back from the broker (so
        it has reached every process subscribed to the topic), at most `timeout` seconds;
        False if it did not. Only publishes on topics this process is subscribed to come
        back. Per topic: a cluster's shards keep order per channel, not across them."""
        if self._came_back.get(topic, 0) >= seq:
            return True
        entry = (topic, seq, asyncio.get_running_loop().create_future())
        self._echo_waits.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await entry[2]
            return True
        except TimeoutError:
            return False
        finally:
            if entry in self._echo_waits:  # timed out or cancelled: no longer waited for
                self._echo_waits.remove(entry)

    async def _publish(self, topic: str, kind: str, payload: bytes, origin: float | None) -> int:
        self._published += 1
        seq = self._published
        trace = tracing.wire_context()
        await self.broker.publish(topic, envelope(kind, payload, origin, self.id, seq, trace))
        return seq

    def announce(self, topic: str, frame: ServerFrame) -> None:
        """Publish `frame` on `topic` as soon as the broker takes publishes again (a
        publish on it just failed): retried with backoff; a later announcement on the
        topic replaces this one. While the broker is down one topic probes it each
        round, so an outage costs one attempt per round, not one per topic."""
        self._announcements.pop(topic, None)
        self._announcements[topic] = (frame.type, encode(frame))
        if self._announcer is None or self._announcer.done():
            self._announcer = asyncio.create_task(self._announce_all())

    async def _announce_all(self) -> None:
        backoff = BACKOFF_MIN_S
        while self._announcements:
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)
            if not await self._announce(next(iter(self._announcements))):
                continue
            rest = tuple(self._announcements)
            told = await asyncio.gather(*(self._announce(topic) for topic in rest))
            if all(told):
                backoff = BACKOFF_MIN_S

    async def _announce(self, topic: str) -> bool:
        announcement = self._announcements.pop(topic, None)
        if announcement is None:
            return True
        try:
            await self.broker.publish(topic, envelope(*announcement))
        except BrokerUnavailable:
            # At the back, unless a newer one came meanwhile: in a cluster, other
            # topics' masters may be serving.
            self._announcements.setdefault(topic, announcement)
            return False
        return True

    async def _subscribed(self, topic: str) -> None:
        if topic not in self._subscribing and self._interest(topic) == 1:
            task = asyncio.create_task(self.broker.subscribe(topic))
            self._subscribing[topic] = task
            task.add_done_callback(lambda _: self._subscribing.pop(topic, None))
        pending = self._subscribing.get(topic)
        if pending is not None:
            await asyncio.shield(pending)

    async def _maybe_unsubscribe(self, topic: str) -> None:
        if self._interest(topic) == 0:
            self._came_back.pop(topic, None)
            await self.broker.unsubscribe(topic)

    def _interest(self, topic: str) -> int:
        return len(self._topics.get(topic, ())) + self._holds.get(topic, 0)

    def _deliver(self, topic: str, message: bytes) -> None:
        if message[0] == _TRACED:
            trace = message[1 : 1 + tracing.WIRE_SIZE]
            message = message[1 + tracing.WIRE_SIZE :]
            with tracing.span("hub.deliver", tracing.from_wire(trace)) as span:
                frame_type = self._deliver_envelope(topic, message)
                span.set(frame_type=frame_type, listeners=len(self._topics.get(topic, ())))
        else:
            self._deliver_envelope(topic, message)

    def _deliver_envelope(self, topic: str, message: bytes) -> str:
        """Deliver one envelope (without its trace context); its frame type ("" when this
        process has no interest)."""
        published_at, origin, publisher, seq, kind_length = _HEADER.unpack_from(message)
        if publisher == self.id:
            self._own_came_back(topic, seq)
        if topic not in self._topics and topic not in self._holds:
            return ""
        start = _HEADER.size
        frame_type = message[start : start + kind_length].decode()
        handler = self._signal_handlers.get(frame_type)
        if handler is not None:
            handler(topic, message[start + kind_length :])
            return frame_type
        self.deliver_local(topic, frame_type, message[start + kind_length :].decode())
        now = time.time()
        FANOUT_LATENCY.observe(max(0.0, now - published_at))
        if frame_type == "sync.delta":
            SYNC_PUSH_TO_DELIVERY.observe(max(0.0, now - origin))
        return frame_type

    def deliver_local(self, topic: str, frame_type: str, text: str) -> None:
        """Hand an encoded frame to this process's listeners of `topic` only."""
        listeners = self._topics.get(topic)
        if not listeners:
            return
        for listener in tuple(listeners):
            listener.deliver(text)
        FRAMES_OUT.labels(frame_type).inc(len(listeners))

    def _own_came_back(self, topic: str, seq: int) -> None:
        # One publisher's messages on a topic come back in publish order: all of the
        # topic's up to `seq` are through.
        if topic not in self._topics and topic not in self._holds:
            return
        self._came_back[topic] = max(self._came_back.get(topic, 0), seq)
        if self._echo_waits:
            waiting = []
            for entry in self._echo_waits:
                if entry[0] != topic or entry[1] > seq:
                    waiting.append(entry)
                elif not entry[2].done():
                    entry[2].set_result(None)
            self._echo_waits = waiting

    def _recovered(self, topics: Collection[str] | None) -> None:
        for topic in tuple(self._topics if topics is None else topics):
            for listener in tuple(self._topics.get(topic, ())):
                listener.broker_recovered()
