"""The broker `REDIS_URL` asks for."""

from __future__ import annotations

from gateway.realtime.broker import Broker
from gateway.realtime.broker.cluster import ClusterBroker
from gateway.realtime.broker.memory import MemoryBroker
from gateway.realtime.broker.redis import RedisBroker
from gateway.redis_address import is_cluster


def broker_for(redis_url: str | None) -> Broker:
    """In-process without a URL; sharded pub/sub on a Redis Cluster; else one Redis."""
    if not redis_url:
        return MemoryBroker()
    if is_cluster(redis_url):
        return ClusterBroker(redis_url)
    return RedisBroker(redis_url)
