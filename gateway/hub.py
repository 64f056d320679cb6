"""Topic -> local listeners, with one broker subscription per topic that has any.

Topics are `patient:<id>`. A frame is encoded once per publish and travels as one
message; each process hands the same text to each of its local listeners. The envelope
carries the publish time (for the fan-out latency metric) and the frame type (for the
frames-out metric) ahead of the JSON.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable
from typing import Protocol
from uuid import UUID

from gateway.broker import Broker
from gateway.metrics import FANOUT_LATENCY, FRAMES_OUT, SYNC_PUSH_TO_DELIVERY
from protocol.codec import encode
from protocol.frames import ServerFrame

log = logging.getLogger(__name__)

# Publish time and origin time (unix seconds; the origin is what caused the frame, e.g.
# the push behind a sync.delta), then the length of the frame type's name.
_HEADER = struct.Struct(">ddB")


class Listener(Protocol):
    def deliver(self, text: str) -> None:
        """Queue one encoded frame; must not block."""

    def broker_recovered(self) -> None:
        """The fan-out link was down: deliveries may have been missed."""


def patient_topic(patient_id: UUID) -> str:
    return f"patient:{patient_id}"


def envelope(frame_type: str, payload: bytes, origin: float | None = None) -> bytes:
    kind = frame_type.encode()
    now = time.time()
    return _HEADER.pack(now, origin or now, len(kind)) + kind + payload


class Hub:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._topics: dict[str, set[Listener]] = {}
        self._subscribing: dict[str, asyncio.Task[None]] = {}
        # Signals travel like frames but are handled by the process, not sent to sockets.
        self.signal_handlers: dict[str, Callable[[str, bytes], None]] = {}

    async def start(self) -> None:
        await self.broker.start(self._deliver, self._recovered)

    async def close(self) -> None:
        await self.broker.close()

    def listeners(self, topic: str) -> frozenset[Listener]:
        return frozenset(self._topics.get(topic, ()))

    async def join(self, topic: str, listener: Listener) -> None:
        """Deliver `topic` to `listener`; once this returns, later publishes reach it."""
        listeners = self._topics.setdefault(topic, set())
        listeners.add(listener)
        if len(listeners) == 1 and topic not in self._subscribing:
            task = asyncio.create_task(self.broker.subscribe(topic))
            self._subscribing[topic] = task
            task.add_done_callback(lambda _: self._subscribing.pop(topic, None))
        pending = self._subscribing.get(topic)
        if pending is not None:
            await asyncio.shield(pending)

    async def leave(self, topic: str, listener: Listener) -> None:
        listeners = self._topics.get(topic)
        if listeners is None:
            return
        listeners.discard(listener)
        if not listeners:
            del self._topics[topic]
            await self.broker.unsubscribe(topic)

    async def publish(self, topic: str, frame: ServerFrame, origin: float | None = None) -> None:
        await self.broker.publish(topic, envelope(frame.type, encode(frame), origin))

    async def signal(self, topic: str, name: str, payload: bytes = b"") -> None:
        await self.broker.publish(topic, envelope(name, payload))

    def _deliver(self, topic: str, message: bytes) -> None:
        if topic not in self._topics:
            return
        published_at, origin, kind_length = _HEADER.unpack_from(message)
        start = _HEADER.size
        frame_type = message[start : start + kind_length].decode()
        handler = self.signal_handlers.get(frame_type)
        if handler is not None:
            handler(topic, message[start + kind_length :])
            return
        self.deliver_local(topic, frame_type, message[start + kind_length :].decode())
        now = time.time()
        FANOUT_LATENCY.observe(max(0.0, now - published_at))
        if frame_type == "sync.delta":
            SYNC_PUSH_TO_DELIVERY.observe(max(0.0, now - origin))

    def deliver_local(self, topic: str, frame_type: str, text: str) -> None:
        """Hand an encoded frame to this process's listeners of `topic` only."""
        listeners = self._topics.get(topic)
        if not listeners:
            return
        for listener in tuple(listeners):
            listener.deliver(text)
        FRAMES_OUT.labels(frame_type).inc(len(listeners))

    def _recovered(self) -> None:
        for listeners in tuple(self._topics.values()):
            for listener in tuple(listeners):
                listener.broker_recovered()
