"""A real Redis Cluster on loopback for the suites: three masters, each with a replica,
made by `redis-cli --cluster create` from `redis-server --cluster-enabled yes` processes.
With TLS files the nodes also listen for TLS (and talk to each other over it): the
gateway gets the TLS ports, the helpers here keep the plain ones (a node tells each
client the ports of its own kind)."""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.crc import key_slot

from tests.support import TIMEOUT_S
from tests.tlscerts import TlsFiles

NODE_TIMEOUT_MS = 1000  # how long a master may be silent before its replica takes over


def _binary(name: str) -> str:
    found = shutil.which(name, path="/usr/local/bin:/usr/bin:/bin")
    if found is None:
        raise RuntimeError(f"the cluster suites need {name} (Debian: redis-server, redis-tools)")
    return found


def _cluster_port() -> int:
    """A free port whose cluster bus port (it + 10,000) is free and valid too."""
    while True:
        port = random.randrange(20000, 50000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port


class RedisClusterNodes:
    def __init__(self, masters: int = 3, replicas: int = 1, tls: TlsFiles | None = None) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="redis-cluster-"))
        self.ports = [_cluster_port() for _ in range(masters * (1 + replicas))]
        self._tls = tls
        self._tls_ports = {p: _cluster_port() for p in self.ports} if tls else {}
        self._replicas = replicas
        self._processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """Two seed nodes, as a deployment would name them."""
        if self._tls is not None:
            seeds = ",".join(f"127.0.0.1:{self._tls_ports[p]}" for p in self.ports[:2])
            return f"rediss+cluster://{seeds}?ssl_ca_certs={self._tls.ca}"
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:2])

    def start(self) -> None:
        for port in self.ports:
            self._start_node(port)
        deadline = time.monotonic() + TIMEOUT_S
        for port in self.ports:
            while self._cli(port, "PING").strip() != "PONG":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis node {port} did not start")
                time.sleep(0.02)
        tls = ["--tls", "--cacert", str(self._tls.ca)] if self._tls else []
        subprocess.run(
            [
                _binary("redis-cli"),
                *tls,
                "--cluster",
                "create",
                *(f"127.0.0.1:{self._tls_ports.get(p, p)}" for p in self.ports),
                "--cluster-replicas",
                str(self._replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=TIMEOUT_S * 3,
        )
        self.wait_healthy()

    def _start_node(self, port: int) -> None:
        self._processes[port] = subprocess.Popen(
            [
                _binary("redis-server"),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
                "--save",
                "",
                "--appendonly",
                "no",
                "--repl-diskless-sync-delay",  # a replica syncs at once (default: 5 s later)
                "0",
                "--dir",
                str(self.directory),
                *self._tls_arguments(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _tls_arguments(self, port: int) -> list[str]:
        if self._tls is None:
            return []
        tls_port = self._tls_ports[port]
        return [
            "--tls-port",
            str(tls_port),
            "--cluster-port",  # the bus, over TLS
            str(tls_port + 10000),
            "--tls-cluster",
            "yes",
            "--tls-replication",
            "yes",
            *self._tls.server_arguments(),
        ]

    def _cli(self, port: int, *args: str) -> str:
        done = subprocess.run(
            [_binary("redis-cli"), "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
        return done.stdout

    def live_ports(self) -> list[int]:
        return [p for p, process in self._processes.items() if process.poll() is None]

    def slots(self, asked: int | None = None) -> list[tuple[int, int, list[int]]]:
        """CLUSTER SLOTS as node `asked` sees it: (first, last, [master port, replica
        ports...])."""
        port = asked if asked is not None else self.live_ports()[0]
        with SyncRedis(port=port, socket_timeout=TIMEOUT_S) as redis:
            reply = redis.execute_command("CLUSTER", "SLOTS")
        return [(int(e[0]), int(e[1]), [int(node[1]) for node in e[2:]]) for e in reply]

    def masters(self) -> list[int]:
        return sorted(nodes[0] for _, _, nodes in self.slots())

    def wait_healthy(self, without: int | None = None, timeout: float = TIMEOUT_S * 3) -> None:
        """Until every live node says the cluster is ok, they agree on the masters, each
        master has its replicas, and `without` (a killed node) serves nothing."""
        deadline = time.monotonic() + timeout
        while True:
            live = self.live_ports()
            views = [self.slots(p) for p in live]
            healthy = all("cluster_state:ok" in self._cli(p, "CLUSTER", "INFO") for p in live)
            agreed = len({tuple(sorted(n[0] for *_, n in view)) for view in views}) == 1
            masters = [n[0] for *_, n in views[0]]
            replicated = all(
                f"connected_slaves:{self._replicas}" in self._cli(m, "INFO", "replication")
                for m in masters
            )
            gone = all(without not in n[:1] for view in views for *_, n in view)
            if healthy and agreed and gone and (replicated or without is not None):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the redis cluster did not become healthy")
            time.sleep(0.05)

    def slot_map_reads(self) -> int:
        """CLUSTER SLOTS commands the live nodes have answered."""
        total = 0
        for port in self.live_ports():
            stats = self._cli(port, "INFO", "commandstats")
            found = re.search(r"^cmdstat_cluster\|slots:calls=(\d+)", stats, re.M)
            total += int(found[1]) if found else 0
        return total

    def master_of(self, channel: str) -> int:
        return self._owner(key_slot(channel.encode()), self.live_ports()[0])

    def move_slot(self, slot: int, to: int) -> None:
        """Move `slot` (and any keys in it) to the master at port `to`, as a resharding
        does, and wait until every node agrees."""
        source = next(nodes[0] for first, last, nodes in self.slots() if first <= slot <= last)
        source_id, target_id = (self._cli(p, "CLUSTER", "MYID").strip() for p in (source, to))
        self._cli(to, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id)
        self._cli(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id)
        keys = self._cli(source, "CLUSTER", "GETKEYSINSLOT", str(slot), "1000").split()
        if keys:
            self._cli(source, "MIGRATE", "127.0.0.1", str(to), "", "0", "5000", "KEYS", *keys)
        for port in dict.fromkeys([to, source, *self.masters()]):
            self._cli(port, "CLUSTER", "SETSLOT", str(slot), "NODE", target_id)
        deadline = time.monotonic() + TIMEOUT_S
        while any(self._owner(slot, p) != to for p in self.live_ports()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not agree on slot {slot}'s move")
            time.sleep(0.05)

    def _owner(self, slot: int, asked: int) -> int:
        return next(n[0] for first, last, n in self.slots(asked) if first <= slot <= last)

    def kill(self, port: int) -> None:
        """SIGKILL, as a crashed host would go."""
        process = self._processes[port]
        process.send_signal(signal.SIGKILL)
        process.wait(TIMEOUT_S)

    async def wait_failed_over(self, port: int) -> None:
        """Until a replica serves what `port` served and the cluster is ok again."""
        await asyncio.to_thread(self.wait_healthy, port)

    async def shard_subscribers(self, channel: str) -> int:
        """Sharded subscribers of `channel`, asked of its master."""
        redis = Redis(port=self.master_of(channel))
        try:
            reply = await redis.execute_command("PUBSUB", "SHARDNUMSUB", channel)  # type: ignore[no-untyped-call]
            return int(reply[1])
        finally:
            await redis.aclose()

    async def classic_subscribers(self, channel: str) -> int:
        """Classic (broadcast) subscribers of `channel` on every live node."""
        total = 0
        for port in self.live_ports():
            redis = Redis(port=port)
            try:
                reply = await redis.execute_command("PUBSUB", "NUMSUB", channel)  # type: ignore[no-untyped-call]
                total += int(reply[1])
            finally:
                await redis.aclose()
        return total

    def stop(self) -> None:
        for process in self._processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self._processes.values():
            process.wait(TIMEOUT_S)
        shutil.rmtree(self.directory, ignore_errors=True)
