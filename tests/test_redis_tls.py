"""Redis over TLS, one server and a cluster, with the server certificates signed by a
private CA the URL names (`?ssl_ca_certs=`): pushes and presence cross gateway processes,
and a server whose certificate the gateway cannot verify is not used."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from gateway.realtime.broker import BrokerUnavailable
from gateway.realtime.broker.link import open_link
from gateway.realtime.broker.redis import RedisBroker
from gateway.realtime.hub import patient_topic
from tests.conftest import RedisServer, gateway_process
from tests.rediscluster import RedisClusterNodes
from tests.support import make_settings, serve_gateway
from tests.tlscerts import TlsFiles, make_tls_files
from tests.wsclient import expect_presence, patient_token, recv, send, session, thread_upsert


@pytest.fixture
def tls_directory() -> Iterator[Path]:
    # Short: the helper Redis's unix socket lives here too (paths are limited to ~107 bytes).
    directory = Path(tempfile.mkdtemp(prefix="redis-tls-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@asynccontextmanager
async def tls_redis(directory: Path, tls: TlsFiles) -> AsyncIterator[RedisServer]:
    server = RedisServer(directory, tls=tls)
    server.start()
    try:
        await server.wait_ready()
        yield server
    finally:
        server.stop()


async def a_push_and_presence_cross_processes(redis_url: str, database_url: str, log: Path) -> None:
    patient, thread = uuid.uuid4(), str(uuid.uuid4())
    async with (
        serve_gateway(make_settings(redis_url=redis_url), database_url) as first,
        gateway_process(database_url, redis_url, log) as (_, second),
        session(first.ws_url, patient_token(patient, "headset")) as (headset, _),
        session(second, patient_token(patient, "phone")) as (phone, _),
    ):
        await expect_presence(headset, ["headset", "phone"])
        await send(phone, thread_upsert(1, thread, "over TLS"))
        delta = await recv(headset, skip=("presence",))
        assert (delta["type"], delta["version"]) == ("sync.delta", 1)
        assert delta["changes"][0]["data"]["title"] == "over TLS"


async def test_one_redis_over_tls_carries_pushes_and_presence_between_processes(
    database_url: str, tls_directory: Path, tmp_path: Path
) -> None:
    tls = make_tls_files(tls_directory)
    async with tls_redis(tls_directory, tls) as redis:
        assert redis.url.startswith("rediss://")
        await a_push_and_presence_cross_processes(redis.url, database_url, tmp_path / "b.log")


async def test_a_redis_cluster_over_tls_carries_pushes_and_presence_between_processes(
    database_url: str, tls_directory: Path, tmp_path: Path
) -> None:
    cluster = RedisClusterNodes(replicas=0, tls=make_tls_files(tls_directory))
    await asyncio.to_thread(cluster.start)
    try:
        assert cluster.url.startswith("rediss+cluster://")
        await a_push_and_presence_cross_processes(cluster.url, database_url, tmp_path / "b.log")
    finally:
        await asyncio.to_thread(cluster.stop)


async def test_a_redis_whose_certificate_cannot_be_verified_is_not_used(
    tls_directory: Path,
) -> None:
    tls = make_tls_files(tls_directory)
    async with tls_redis(tls_directory, tls) as redis:
        untrusted = redis.url.partition("?")[0]  # the private CA not named
        with pytest.raises(ssl.SSLCertVerificationError):
            await open_link(untrusted)
        broker = RedisBroker(untrusted)
        try:
            with pytest.raises(BrokerUnavailable):
                await broker.publish(patient_topic(uuid.uuid4()), b"never sent")
            with pytest.raises(Exception, match="certificate verify failed"):
                await broker.ping()
        finally:
            await broker.close()
