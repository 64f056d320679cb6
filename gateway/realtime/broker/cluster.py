"""Sharded pub/sub over a Redis Cluster (Redis 7's SPUBLISH and SSUBSCRIBE).

Classic PUBLISH in a cluster is broadcast to every node, so more nodes add no fan-out
capacity. A shard channel belongs to the hash slot of its name: SPUBLISH goes to the
master that owns the slot, and only that master sends it on. So each process keeps the
slot map (CLUSTER SLOTS, read from any node it knows), one pipelined publisher per master
it publishes to, and one subscriber link per master that owns a topic it listens to
(SSUBSCRIBE, one command per slot, as Redis requires).

When a subscriber link drops (its master failed), a master answers MOVED (the slot lives
elsewhere now) or a master unsubscribes a topic itself (its slot was migrated), a
supervisor re-reads the slot map, subscribes the affected topics where they live now and
reports those topics recovered, so their clients catch up from PostgreSQL, as after a
single Redis restarts. Topics on the other masters flow on undisturbed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import cast

import hiredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from gateway.realtime.broker import MessageHandler, RecoveryHandler
from gateway.realtime.broker.commands import cluster_client
from gateway.realtime.broker.failures import (
    BACKOFF_MAX_S,
    BACKOFF_MIN_S,
    first_connection,
    hand_on,
    publish_failed,
    stop,
)
from gateway.realtime.broker.link import (
    Confirmations,
    Link,
    LinkLost,
    Reply,
    command,
    open_link,
)
from gateway.realtime.broker.publisher import REPLY_TIMEOUT_S, CommandFailed, Publisher
from gateway.redis_address import ClusterAddress

log = logging.getLogger(__name__)

SLOTS = 16384

Node = tuple[str, int]


def slot_of(topic: str) -> int:
    return int(key_slot(topic.encode()))


def _redirected(error: object) -> bool:
    """A MOVED or ASK answer: the slot is served by another master. (Shard channels get
    no ASK during a migration, but a subscription refused either way is redone.)"""
    return str(error).startswith(("MOVED", "ASK"))


class ClusterBroker:
    name = "redis-cluster"

    def __init__(self, url: str) -> None:
        self._address = ClusterAddress.parse(url)
        self._client = cluster_client(url)  # pings
        self._owners: list[Node] | None = None  # the master of each slot
        self._nodes: list[Node] = list(self._address.seeds)  # where to read the map
        self._publishers: dict[Node, Publisher] = {}
        self._links: dict[Node, Link] = {}  # subscriber links, by master
        self._opening = asyncio.Lock()
        self._refreshing = asyncio.Lock()
        self._refreshed_at = float("-inf")  # when the slot map was last read (monotonic)
        self._topics: set[str] = set()  # wanted
        self._placed: dict[str, Node] = {}  # subscribed (confirmed), and where
        self._orphans: set[str] = set()  # wanted, and messages may have been missed
        self._unsubscribing: dict[str, int] = {}  # SUNSUBSCRIBEs sent, not yet answered
        self._confirmations = Confirmations()
        self._on_message: MessageHandler | None = None
        self._trouble = asyncio.Event()  # re-read the map and re-place what needs it
        self._mapped = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None

    # ---- Broker ----------------------------------------------------------------------

    async def start(self, on_message: MessageHandler, on_recovered: RecoveryHandler) -> None:
        self._on_message = on_message
        self._supervisor = asyncio.create_task(self._supervise(on_recovered))
        await first_connection(self._mapped, self.name)

    async def close(self) -> None:
        await stop(self._supervisor)
        links, self._links = self._links, {}
        for link in links.values():
            link.close()
        for publisher in self._publishers.values():
            publisher.close()
        await self._client.aclose()

    async def publish(self, topic: str, message: bytes) -> None:
        try:
            owner = await self._owner(topic)
            try:
                await self._publisher(owner).publish(topic, message)
            except CommandFailed:
                # Redirected, or the master is unreachable: the slot may have moved (a
                # resharding, a failover this process has not seen yet). Once more if the
                # map now says so; the subscriptions follow it.
                self._trouble.set()
                await self._refresh()
                moved_to = await self._owner(topic)
                if moved_to == owner:
                    raise
                await self._publisher(moved_to).publish(topic, message)
        except (CommandFailed, LinkLost) as exc:  # LinkLost: no node gave a slot map
            raise publish_failed(self.name, exc) from exc

    async def subscribe(self, topic: str) -> None:
        self._topics.add(topic)
        if self._owners is None:
            self._orphans.add(topic)
            return  # the supervisor subscribes it once the cluster answers
        node = self._owners[slot_of(topic)]
        try:
            link = await self._link(node)
            await self._confirmations.subscribe(link, b"SSUBSCRIBE", [[topic]])
        except (LinkLost, OSError, TimeoutError) as exc:
            log.warning("redis cluster subscribe failed: %s", type(exc).__name__)
            self._orphans.add(topic)
            self._trouble.set()
            return
        if topic in self._topics:
            self._placed[topic] = node

    async def unsubscribe(self, topic: str) -> None:
        self._topics.discard(topic)
        self._orphans.discard(topic)
        node = self._placed.pop(topic, None)
        if node is not None:
            self._forget(topic, node)

    def _forget(self, topic: str, node: Node) -> None:
        """Unsubscribe `topic` at `node` (if still connected); the answer is ours."""
        link = self._links.get(node)
        if link is not None and link.open:
            self._unsubscribing[topic] = self._unsubscribing.get(topic, 0) + 1
            link.write(command(b"SUNSUBSCRIBE", topic.encode()))

    async def ping(self) -> None:
        await self._client.ping(target_nodes=RedisCluster.RANDOM)

    # ---- the slot map ----------------------------------------------------------------

    async def _owner(self, topic: str) -> Node:
        if self._owners is None:
            await self._refresh()
        assert self._owners is not None
        return self._owners[slot_of(topic)]

    async def _refresh(self) -> None:
        """Read the slot map from the first node that answers with one covering every
        slot; LinkLost if none does. Not again if another caller read it after this call
        was made: publishes refused together (a failover) share one read."""
        asked = time.monotonic()
        async with self._refreshing:
            if self._refreshed_at > asked:
                return
            refusal = ""
            for node in tuple(dict.fromkeys([*self._nodes, *self._address.seeds])):
                try:
                    reply = await self._ask(node, command(b"CLUSTER", b"SLOTS"))
                except (LinkLost, OSError, TimeoutError):
                    continue
                if isinstance(reply, hiredis.ReplyError):  # not a cluster node, say
                    refusal = f": {reply}"
                    continue
                mapped = _slot_map(reply, node)
                if mapped is not None:
                    self._owners, self._nodes = mapped
                    self._refreshed_at = time.monotonic()
                    return
            raise LinkLost(f"no redis cluster node answered with a full slot map{refusal}")

    async def _ask(self, node: Node, request: bytes) -> Reply:
        link = await open_link(self._address.node_url(*node))
        try:
            async with asyncio.timeout(REPLY_TIMEOUT_S):
                return await link.call(request)
        finally:
            link.close()

    # ---- links -----------------------------------------------------------------------

    def _publisher(self, node: Node) -> Publisher:
        publisher = self._publishers.get(node)
        if publisher is None:
            publisher = Publisher(self._address.node_url(*node), b"SPUBLISH")
            self._publishers[node] = publisher
        return publisher

    async def _link(self, node: Node) -> Link:
        """The subscriber link to `node`, opened if there is none."""
        async with self._opening:
            link = self._links.get(node)
            if link is None or not link.open:
                link = await open_link(self._address.node_url(*node))
                link.on_reply = lambda reply: self._pushed(reply)
                link.closed.add_done_callback(lambda _: self._lost(node, link))
                self._links[node] = link
            return link

    def _lost(self, node: Node, link: Link) -> None:
        if self._links.get(node) is not link:
            return  # closed by us
        del self._links[node]
        stale = self._publishers.pop(node, None)
        if stale is not None:
            stale.close()
        for topic, placed in tuple(self._placed.items()):
            if placed == node:
                del self._placed[topic]
                self._orphans.add(topic)
        # Unsubscribes sent on the lost link will not be answered.
        owners = self._owners
        for topic in tuple(self._unsubscribing):
            if owners is None or owners[slot_of(topic)] == node:
                del self._unsubscribing[topic]
        self._trouble.set()

    def _pushed(self, reply: Reply) -> None:
        """A message, a confirmation or a refusal a subscriber link received."""
        if isinstance(reply, hiredis.ReplyError):
            if _redirected(reply):
                self._trouble.set()  # subscribed against an old map: the supervisor redoes it
            else:
                log.warning("redis cluster refused a subscription command")
            return
        if not isinstance(reply, list) or len(reply) != 3:
            return
        kind, channel = reply[0], reply[1].decode()
        if kind == b"smessage":
            hand_on(self._on_message, channel, reply[2])
        elif kind == b"ssubscribe":
            self._confirmations.confirm(channel)
        elif kind == b"sunsubscribe":
            asked = self._unsubscribing.get(channel, 0)
            if asked:
                if asked == 1:
                    del self._unsubscribing[channel]
                else:
                    self._unsubscribing[channel] = asked - 1
            elif channel in self._topics:
                # Redis dropped it: the slot was migrated to another master.
                self._placed.pop(channel, None)
                self._orphans.add(channel)
                self._trouble.set()

    # ---- the supervisor --------------------------------------------------------------

    async def _supervise(self, on_recovered: RecoveryHandler) -> None:
        backoff = BACKOFF_MIN_S
        troubled = False
        while True:
            try:
                await self._refresh()
                self._mapped.set()
                await self._place()
                if self._orphans:
                    recovered, self._orphans = self._orphans, set()
                    log.info("redis cluster subscriptions recovered")
                    on_recovered(recovered)
                troubled = False
                backoff = BACKOFF_MIN_S
                await self._trouble.wait()
                self._trouble.clear()
                continue
            except asyncio.CancelledError:
                raise
            except (LinkLost, OSError, TimeoutError) as exc:
                if not troubled:
                    why = str(exc) if isinstance(exc, LinkLost) else type(exc).__name__
                    log.warning("redis cluster unreachable in part (%s); retrying", why)
                troubled = True
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _place(self) -> None:
        """Subscribe every wanted topic that is not subscribed at its slot's master."""
        assert self._owners is not None
        wanted: dict[Node, dict[int, list[str]]] = {}
        for topic in self._topics:
            slot = slot_of(topic)
            node = self._owners[slot]
            link = self._links.get(node)
            placed = self._placed.get(topic)
            if placed == node and link is not None and link.open:
                continue
            if placed is not None:  # its slot moved while we listened at the old master
                del self._placed[topic]
                self._orphans.add(topic)
                self._forget(topic, placed)
            wanted.setdefault(node, {}).setdefault(slot, []).append(topic)
        for node, by_slot in wanted.items():
            link = await self._link(node)
            await self._confirmations.subscribe(link, b"SSUBSCRIBE", list(by_slot.values()))
            for topics in by_slot.values():
                for topic in topics:
                    if topic in self._topics:
                        self._placed[topic] = node


def _slot_map(reply: Reply, asked: Node) -> tuple[list[Node], list[Node]] | None:
    """The master of every slot and every node named, from a CLUSTER SLOTS reply; None
    unless it covers all slots."""
    if not isinstance(reply, list):
        return None
    owners: list[Node | None] = [None] * SLOTS
    nodes: list[Node] = []
    for entry in reply:
        start, end, *servers = entry
        named = [_endpoint(server, asked) for server in servers]
        owners[start : end + 1] = [named[0]] * (end - start + 1)
        nodes.extend(named)
    if None in owners:
        return None
    return cast(list[Node], owners), list(dict.fromkeys(nodes))


def _endpoint(server: list[Reply], asked: Node) -> Node:
    host = server[0].decode() if server[0] else ""
    # An empty endpoint means "the one you asked" (Redis's cluster-preferred-endpoint-type).
    return (host or asked[0], int(server[1]))
