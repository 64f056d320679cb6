"""Fan-out of encoded frames between gateway processes.

A broker carries bytes published on a topic to every process subscribed to that topic,
in publish order per publishing process. It is a notification path only: PostgreSQL
holds the truth, and a client that may have missed something catches up from there.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Protocol


class BrokerUnavailable(Exception):
    """A publish could not be handed to the broker (it is down or unreachable)."""


# Called with (topic, message) for every message on a subscribed topic, in order.
MessageHandler = Callable[[str, bytes], None]
# Called after the link to the broker was lost and is back: messages of these topics (of
# every topic: None) may have been missed.
RecoveryHandler = Callable[[Collection[str] | None], None]


class Broker(Protocol):
    name: str

    async def start(self, on_message: MessageHandler, on_recovered: RecoveryHandler) -> None:
        """Begin delivering messages of subscribed topics to `on_message`."""

    async def close(self) -> None: ...

    async def publish(self, topic: str, message: bytes) -> None:
        """Send `message` to every subscriber of `topic`; BrokerUnavailable if it cannot."""

    async def subscribe(self, topic: str) -> None:
        """Deliver `topic`'s messages from now on (idempotent)."""

    async def unsubscribe(self, topic: str) -> None: ...

    async def ping(self) -> None:
        """Raise unless the broker is reachable now (readiness)."""
