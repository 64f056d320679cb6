"""The in-process broker: one gateway process, delivery by direct call."""

from __future__ import annotations

from gateway.realtime.broker import MessageHandler, RecoveryHandler


class MemoryBroker:
    name = "memory"

    def __init__(self) -> None:
        self._topics: set[str] = set()
        self._on_message: MessageHandler | None = None

    async def start(self, on_message: MessageHandler, on_recovered: RecoveryHandler) -> None:
        self._on_message = on_message

    async def close(self) -> None:
        self._on_message = None
        self._topics.clear()

    async def publish(self, topic: str, message: bytes) -> None:
        if self._on_message is not None and topic in self._topics:
            self._on_message(topic, message)

    async def subscribe(self, topic: str) -> None:
        self._topics.add(topic)

    async def unsubscribe(self, topic: str) -> None:
        self._topics.discard(topic)

    async def ping(self) -> None:
        return None
