"""How both Redis brokers (one Redis, a cluster) meet failure: a Redis not there at
start, the reconnect backoff, a publish that did not reach Redis, a delivery that
raised."""

from __future__ import annotations

import asyncio
import logging

from gateway.realtime.broker import BrokerUnavailable, MessageHandler
from gateway.realtime.broker.link import SUBSCRIBE_TIMEOUT_S
from gateway.realtime.metrics import BROKER_PUBLISH_FAILURES

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 2.0


def publish_failed(broker: str, exc: BaseException) -> BrokerUnavailable:
    """Counted and logged (by type: no payload); the error to raise to the publisher."""
    BROKER_PUBLISH_FAILURES.labels(broker).inc()
    log.warning("%s publish failed: %s", broker, type(exc).__name__)
    return BrokerUnavailable(broker)


def hand_on(on_message: MessageHandler | None, channel: str, payload: bytes) -> None:
    """One pushed message to the hub; one bad delivery must not take the link down."""
    assert on_message is not None
    try:
        on_message(channel, payload)
    except Exception:
        log.exception("delivering a broker message failed")


async def first_connection(connected: asyncio.Event, broker: str) -> None:
    """Wait a while for the first connection; a gateway starts without it (its reconnect
    loop keeps trying, and readiness says whether Redis answers)."""
    try:
        async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
            await connected.wait()
    except TimeoutError:
        log.warning("%s not reachable yet; retrying in the background", broker)


async def stop(task: asyncio.Task[None] | None) -> None:
    """Cancel a broker's background task and wait until it has ended."""
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
