"""A redis-py client for ordinary commands (presence, readiness pings), for one Redis or
a Redis Cluster, as `REDIS_URL` says."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from gateway.redis_address import ClusterAddress, is_cluster

POOL_SIZE = 32  # connections per process (per node of a cluster) for commands
POOL_WAIT_S = 5.0
CONNECT_TIMEOUT_S = 2.0

CommandClient = Redis | RedisCluster


def command_client(url: str) -> CommandClient:
    """One Redis: a pool that is bounded and makes callers wait rather than fail when
    every connection is busy (a crowd of sockets joining at once). A cluster: redis-py's
    cluster client, which follows the slot map and fails over with the cluster."""
    if is_cluster(url):
        return cluster_client(url)
    pool = BlockingConnectionPool.from_url(
        url, max_connections=POOL_SIZE, timeout=POOL_WAIT_S, socket_connect_timeout=2
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


def cluster_client(url: str) -> RedisCluster:
    address = ClusterAddress.parse(url)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in address.seeds],
        ssl=address.tls,
        username=address.username,
        password=address.password,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
    )
