"""redis-py clients for the few commands off the hot path (readiness pings; a cluster's
presence): one for a single Redis, one for a Redis Cluster."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from gateway.redis_address import ClusterAddress

POOL_SIZE = 32  # connections per process for commands
POOL_WAIT_S = 5.0
CONNECT_TIMEOUT_S = 2.0


def redis_client(url: str) -> Redis:
    """A pool that is bounded and makes callers wait rather than fail when every
    connection is busy."""
    pool = BlockingConnectionPool.from_url(
        url, max_connections=POOL_SIZE, timeout=POOL_WAIT_S, socket_connect_timeout=2
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


def cluster_client(url: str) -> RedisCluster:
    """redis-py's cluster client, which follows the slot map and fails over with it."""
    address = ClusterAddress.parse(url)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in address.seeds],
        ssl=address.tls,
        ssl_ca_certs=address.ca_file,
        username=address.username,
        password=address.password,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
    )
