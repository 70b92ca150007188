"""
The Redis broker and the cluster state, against the machine's Redis (a key prefix per test,
deleted afterwards) and, for outages, a private redis-server on a spare port. Each "node" here is
one process's push side (registry, broker, state, hub) built in this process.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from pushsvc.apps import App, Apps
from pushsvc.fanout.registry import Registry
from pushsvc.health import HealthResource
from pushsvc.hub import Hub
from pushsvc.interfaces import BrokerUnavailable, IBroker, IClusterState, PushSettings
from pushsvc.redis.address import RedisAddress, parseRedisAddress
from pushsvc.redis.broker import RedisBroker
from pushsvc.redis.link import RETRY_MAX, retryDelay
from tests.helpers import captureLogs, logObserver, stubTreq
from tests.redisutil import Conn, FakeRedis, Node, RedisServer, RedisTestCase, deleteKeys
from tests.wsclient import subscribeClient

APP = App("a1", "key1", "secret1")
OTHER = App("a2", "key2", "secret2")


class AddressTests(SynchronousTestCase):
    def test_urls(self) -> None:
        """redis:// URLs become TCP endpoints with the database and credentials kept aside."""
        self.assertEqual(
            parseRedisAddress("redis://127.0.0.1:6390/2"),
            RedisAddress("tcp:127.0.0.1:6390", "redis://127.0.0.1:6390/2", 2),
        )
        a = parseRedisAddress("redis://bob:s3cret@cache.example:7000")
        self.assertEqual(
            (a.endpoint, a.username, a.password, a.dbid),
            ("tcp:cache.example:7000", "bob", "s3cret", None),
        )
        self.assertNotIn("s3cret", a.display)
        self.assertEqual(parseRedisAddress("redis://h").endpoint, "tcp:h:6379")
        self.assertEqual(parseRedisAddress("rediss://h:6380").endpoint, "tls:h:6380")
        self.assertEqual(
            parseRedisAddress("unix:///run/redis.sock").endpoint, "unix:/run/redis.sock"
        )

    def test_endpoints(self) -> None:
        """Twisted client endpoint strings are taken as they are."""
        self.assertEqual(parseRedisAddress("tcp:127.0.0.1:6379").endpoint, "tcp:127.0.0.1:6379")
        self.assertEqual(parseRedisAddress("unix:/tmp/r.sock").endpoint, "unix:/tmp/r.sock")

    def test_passwordNotInRepr(self) -> None:
        """The repr of an address (logs, tracebacks) never shows the password."""
        a = parseRedisAddress("redis://bob:hunter2@h:6379/0")
        self.assertEqual(a.password, "hunter2")
        self.assertNotIn("hunter2", repr(a))
        self.assertNotIn("hunter2", str(a))

    def test_bad(self) -> None:
        """Bad values are refused with a sentence that never shows the password."""
        for bad in (
            "",
            "localhost:6379",
            "http://h:1",
            "redis://h:port",
            "redis://h/zero",
            "tcp:6379",
            "redis://:pw@/0",
            "redis://u:hunter2@h/x",
        ):
            e = self.assertRaises(ValueError, parseRedisAddress, bad)
            self.assertNotIn("hunter2", str(e))
            self.assertTrue(str(e).endswith("."), str(e))


class BrokerTests(RedisTestCase):
    @inlineCallbacks
    def test_interfaces(self) -> Generator[Deferred[Any], Any, None]:
        """The Redis broker and state provide IBroker and IClusterState."""
        node = yield self.node()
        self.assertTrue(verifyObject(IBroker, node.broker))
        self.assertTrue(verifyObject(IClusterState, node.state))
        self.assertEqual(node.hub.health(), {"broker": "ok"})

    @inlineCallbacks
    def test_publishEveryNode(self) -> Generator[Deferred[Any], Any, None]:
        """A publish through one node reaches the subscribers of every node; socket_id
        exclusion works for a socket on another node."""
        a, b = yield self.nodes(2)
        ca, cb1, cb2 = a.connect(APP.id), b.connect(APP.id), b.connect(APP.id)
        for node, conn in ((a, ca), (b, cb1), (b, cb2)):
            yield node.subscribe(conn, "news")
        yield a.hub.publish(APP, ["news"], "ev", "hello", exceptSocketId=cb2.socketId)
        for conn in (ca, cb1):
            m = yield conn.next("ev", "news")
            self.assertEqual(m["data"], "hello")
        yield b.hub.publish(APP, ["news"], "ev2", "second")
        m = yield cb2.next("ev2")
        self.assertEqual([m["event"] for m in cb2.messages], [], "got the excluded event")

    @inlineCallbacks
    def test_oneRedisSubscriptionPerChannel(self) -> Generator[Deferred[Any], Any, None]:
        """A node holds one Redis subscription per channel, from its first local subscriber to
        its last."""
        node = yield self.node()
        name = node.broker.channelName(APP.id, "c")
        conns = [node.connect(APP.id) for _ in range(3)]
        for conn in conns:
            yield node.subscribe(conn, "c")
        reply = yield node.broker.command("PUBSUB", "NUMSUB", name)
        self.assertEqual(reply, [name, 1])
        for conn in conns[:2]:
            node.hub.unsubscribe(conn, "c")
        self.assertEqual((yield node.broker.command("PUBSUB", "NUMSUB", name)), [name, 1])
        node.hub.unsubscribe(conns[2], "c")
        # UNSUBSCRIBE went out on the subscriber connection; a PUBLISH sent after it counts 0.
        yield node.broker._send(name, "unsubscribe")
        self.assertEqual((yield node.broker.command("PUBSUB", "NUMSUB", name)), [name, 0])

    @inlineCallbacks
    def test_appsIsolated(self) -> Generator[Deferred[Any], Any, None]:
        """A channel of one app is not the same-named channel of another."""
        a, b = yield self.nodes(2)
        mine, theirs = a.connect(APP.id), b.connect(OTHER.id)
        yield a.subscribe(mine, "news")
        yield b.subscribe(theirs, "news")
        yield b.hub.publish(OTHER, ["news"], "secret", "x")
        yield a.hub.publish(APP, ["news"], "public", "y")
        yield theirs.next("secret")
        yield mine.next("public")
        self.assertEqual(mine.events("secret"), [])
        info = yield a.hub.channelInfo(APP, "news")
        self.assertEqual(info.subscriptionCount, 1)


class ClusterStateTests(RedisTestCase):
    @inlineCallbacks
    def test_countsAndChannels(self) -> Generator[Deferred[Any], Any, None]:
        """subscription_count, user_count and the channel list add up every node."""
        a, b = yield self.nodes(2)
        for node in (a, a, b):
            yield node.subscribe(node.connect(APP.id), "news")
        yield a.subscribe(a.connect(APP.id), "presence-r", "ann", {"n": 1})
        yield b.subscribe(b.connect(APP.id), "presence-r", "bob", None)
        yield b.subscribe(b.connect(APP.id), "presence-r", "ann", {"n": 1})
        info = yield b.hub.channelInfo(APP, "news")
        self.assertEqual((info.occupied, info.subscriptionCount, info.userCount), (True, 3, None))
        info = yield a.hub.channelInfo(APP, "presence-r")
        self.assertEqual((info.subscriptionCount, info.userCount), (3, 2))
        channels = yield a.hub.occupiedChannels(APP, None)
        self.assertEqual(
            {c: i.subscriptionCount for c, i in channels.items()}, {"news": 3, "presence-r": 3}
        )
        self.assertEqual(list((yield a.hub.occupiedChannels(APP, "pre"))), ["presence-r"])
        self.assertEqual(sorted((yield b.hub.presenceUserIds(APP, "presence-r"))), ["ann", "bob"])
        self.assertEqual(
            (yield a.hub.presenceMembers(APP.id, "presence-r")), {"ann": {"n": 1}, "bob": None}
        )
        self.assertFalse((yield a.hub.channelInfo(APP, "empty")).occupied)

    @inlineCallbacks
    def test_memberEventsAcrossNodes(self) -> Generator[Deferred[Any], Any, None]:
        """member_added goes out on a user's first connection in the cluster only, and
        member_removed on its last, whichever nodes they are on."""
        a, b = yield self.nodes(2)
        watcher = b.connect(APP.id)
        yield b.subscribe(watcher, "presence-r", "watcher")
        ann1, ann2 = a.connect(APP.id), b.connect(APP.id)
        yield a.subscribe(ann1, "presence-r", "ann", {"name": "Ann"})
        added = yield watcher.next("pusher_internal:member_added")
        self.assertEqual(added["data"], {"user_id": "ann", "user_info": {"name": "Ann"}})
        yield b.subscribe(ann2, "presence-r", "ann", {"name": "Ann"})
        a.hub.disconnect(ann1)
        b.hub.unsubscribe(ann2, "presence-r")
        removed = yield watcher.next("pusher_internal:member_removed")
        self.assertEqual(removed["data"], {"user_id": "ann"})
        # a marker published after everything: no second member_added came before it
        yield a.hub.publish(APP, ["presence-r"], "marker", "")
        yield watcher.next("marker")
        self.assertEqual(watcher.events("pusher_internal:member_added"), [])
        self.assertEqual(watcher.events("pusher_internal:member_removed"), [])

    @inlineCallbacks
    def test_deadNodeReaped(self) -> Generator[Deferred[Any], Any, None]:
        """A node that stops without a word (crash) loses its members and subscriptions once
        its heartbeat expires; a survivor announces member_removed."""
        a, b = yield self.nodes(2)
        watcher = b.connect(APP.id)
        yield b.subscribe(watcher, "presence-r", "watcher")
        yield a.subscribe(a.connect(APP.id), "presence-r", "ann")
        yield watcher.next("pusher_internal:member_added")
        self.assertEqual((yield b.hub.channelInfo(APP, "presence-r")).userCount, 2)
        yield a.stop(retire=False)
        # Node TTL 1 s here: the wait for it is bounded (the timing is pinned on a Clock by
        # tests/test_contracts.py, MemoryStateTests.test_deadNodeReaped).
        removed = yield watcher.next("pusher_internal:member_removed", timeout=3)
        self.assertEqual(removed["data"], {"user_id": "ann"})
        info = yield b.hub.channelInfo(APP, "presence-r")
        self.assertEqual((info.subscriptionCount, info.userCount), (1, 1))
        keys = yield b.broker.command("KEYS", f"{self.prefix}:*:{a.hub.nodeId}*")
        self.assertEqual(keys, [])

    @inlineCallbacks
    def test_gracefulStopWithdraws(self) -> Generator[Deferred[Any], Any, None]:
        """A node that stops cleanly takes its share out of Redis at once."""
        a, b = yield self.nodes(2)
        yield a.subscribe(a.connect(APP.id), "news")
        yield b.subscribe(b.connect(APP.id), "news")
        yield a.stop()
        self.assertEqual((yield b.hub.channelInfo(APP, "news")).subscriptionCount, 1)


class StallReapTests(RedisTestCase):
    @inlineCallbacks
    def test_stallLongerThanTTLReapsNobody(self) -> Generator[Deferred[Any], Any, None]:
        """
        Redis stalls longer than the node TTL (DEBUG SLEEP 1.5 against a 1 s TTL): every
        node's heartbeat was held up alike, so when Redis wakes no live node is reaped and no
        member_removed (nor a second member_added) reaches anyone.
        """
        server = RedisServer(debug=True)
        yield server.start()
        self.addCleanup(server.stop)
        a, b = yield self.nodes(2, f"tcp:127.0.0.1:{server.port}")
        watcher = b.connect(APP.id)
        yield b.subscribe(watcher, "presence-r", "watcher")
        yield a.subscribe(a.connect(APP.id), "presence-r", "ann")
        yield watcher.next("pusher_internal:member_added")
        raw = yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", server.port), Protocol()
        )
        self.addCleanup(raw.transport.loseConnection)
        woke: Deferred[None] = Deferred()

        def woken(data: bytes) -> None:
            if not woke.called:
                woke.callback(None)

        raw.dataReceived = woken  # the reply is all we wait for
        raw.transport.write(b"DEBUG SLEEP 1.5\r\n")
        yield woke.addTimeout(15, reactor)
        # Two heartbeats of each node after the stall (0.2 s apart): any reaping has happened.
        for node in (a, b):
            yield node.state._run("beat", APP.id)
            yield node.state._run("beat", APP.id)
        yield a.hub.publish(APP, ["presence-r"], "marker", "")
        yield watcher.next("marker")
        self.assertEqual(watcher.events("pusher_internal:member_removed"), [])
        self.assertEqual(watcher.events("pusher_internal:member_added"), [])
        self.assertEqual(
            sorted((yield b.hub.presenceUserIds(APP, "presence-r"))), ["ann", "watcher"]
        )
        deleteKeys(self.prefix + ":*", server.port)


class OutageTests(RedisTestCase):
    """A private redis-server, killed and started again on the same port."""

    @inlineCallbacks
    def test_outageAndRecovery(self) -> Generator[Deferred[Any], Any, None]:
        """While Redis is down publishes fail with BrokerUnavailable and health says so; when
        it is back the same subscribers get events again and the cluster state is rebuilt."""
        server = RedisServer()
        yield server.start()
        self.addCleanup(server.stop)
        address = f"tcp:127.0.0.1:{server.port}"
        a, b = yield self.nodes(2, address)
        ca, cb = a.connect(APP.id), b.connect(APP.id)
        yield a.subscribe(ca, "news")
        yield b.subscribe(cb, "presence-r", "bob")
        yield b.subscribe(b.connect(APP.id), "news")
        yield server.stop()
        yield self.assertFailure(a.hub.publish(APP, ["news"], "ev", "lost"), BrokerUnavailable)
        health = a.hub.health()["broker"]
        self.assertIn(f"redis tcp:127.0.0.1:{server.port} unreachable: ", health)
        yield self.assertFailure(a.hub.channelInfo(APP, "news"), BrokerUnavailable)
        # still serving locally: a new subscriber while Redis is away
        late = a.connect(APP.id)
        yield a.subscribe(late, "late")

        yield server.start()
        yield a.whenHealthy()
        yield b.whenHealthy()
        self.assertEqual(a.hub.health(), {"broker": "ok"})
        yield b.hub.publish(APP, ["news"], "ev", "back")
        yield ca.next("ev")
        yield b.hub.publish(APP, ["late"], "ev", "late too")
        yield late.next("ev")
        # Redis came back empty; the nodes wrote their shares again.
        info = yield a.hub.channelInfo(APP, "news")
        self.assertEqual(info.subscriptionCount, 2)
        self.assertEqual((yield a.hub.presenceUserIds(APP, "presence-r")), ["bob"])
        deleteKeys(self.prefix + ":*", server.port)


def killSubscriber(via: Node, victim: Node) -> Deferred[Any]:
    """
    C{CLIENT KILL} the subscriber connection of C{victim} only (found by the name it set), as a
    network blip or Redis's pubsub output-buffer limit would; fires once Redis killed it.
    """
    return killConnection(via, victim, "subscriber")


def killConnection(via: Node, victim: Node, role: str) -> Deferred[Any]:
    """C{CLIENT KILL} the C{role} ("commands", "subscriber") connection of C{victim} only."""
    name = f"{victim.broker.name}:{role}"

    def kill(listing: str) -> Deferred[Any]:
        ids = []
        for line in listing.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if fields.get("name") == name:
                ids.append(fields["id"])
        assert len(ids) == 1, f"no single connection named {name}: {listing}"
        return via.broker.command("CLIENT", "KILL", "ID", ids[0])

    kind = "pubsub" if role == "subscriber" else "normal"
    return via.broker.command("CLIENT", "LIST", "TYPE", kind).addCallback(kill)


def logged(text: str, timeout: float = 10) -> Deferred[None]:
    """Fires once a log event whose text contains C{text} is emitted."""
    d: Deferred[None] = Deferred()

    def observe(event: dict[str, Any]) -> None:
        if not d.called and text in formatEvent(event):
            d.callback(None)

    observer = logObserver(observe)
    globalLogPublisher.addObserver(observer)
    d.addTimeout(timeout, reactor)

    def removed(result: object) -> object:
        globalLogPublisher.removeObserver(observer)
        return result

    return d.addBoth(removed)


class CommandFaultTests(RedisTestCase):
    """A node whose command connection is killed or stalls: its clients stay connected."""

    @inlineCallbacks
    def test_commandsKilledKeepsClients(self) -> Generator[Deferred[Any], Any, None]:
        """
        CLIENT KILL of B's command connection only: a WebSocket client on B stays open and
        keeps receiving what A publishes; a publish through B meanwhile fails with
        BrokerUnavailable (503) or, once the connection is back, succeeds and arrives.
        """
        a, b = yield self.nodes(2)
        port = self.listen(b, Apps([APP]))
        client = yield self.wsConnect(port, APP.key)
        yield subscribeClient(APP, client, "news")
        dropped = logged("dropped the commands connection")
        yield killConnection(a, b, "commands")
        yield dropped
        self.assertFalse(b.broker.healthy)
        self.assertTrue(b.hub.acceptingConnections)
        try:
            yield b.hub.publish(APP, ["news"], "ev", "during")
        except BrokerUnavailable:
            pass
        else:
            yield client.expect("ev", "news", timeout=10)
        yield a.hub.publish(APP, ["news"], "fromA", "gap")
        msg = yield client.expect("fromA", "news", timeout=10)
        self.assertEqual(msg["data"], "gap")
        yield b.whenHealthy()
        yield b.hub.publish(APP, ["news"], "ev", "after")
        msg = yield client.expect("ev", "news", timeout=10)
        self.assertEqual(msg["data"], "after")
        self.assertFalse(client.closed.called)

    @inlineCallbacks
    def test_stallDegradesAndKeepsClients(self) -> Generator[Deferred[Any], Any, None]:
        """
        DEBUG SLEEP 3 on a private redis-server: a publish through B fails with
        BrokerUnavailable before Redis answers (it would succeed once Redis woke), health names
        the broker meanwhile, and no client on either node is closed; afterwards publishes
        reach the same client again. (The publish answered 503 may still be carried once
        Redis wakes: a timeout cannot take back what was sent.)
        """
        server = RedisServer(debug=True)
        yield server.start()
        self.addCleanup(server.stop)
        address = f"tcp:127.0.0.1:{server.port}"
        a, b = yield self.nodes(2, address)
        port = self.listen(b, Apps([APP]))
        client = yield self.wsConnect(port, APP.key)
        yield subscribeClient(APP, client, "news")
        onA = a.connect(APP.id)
        yield a.subscribe(onA, "news")
        raw = yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", server.port), Protocol()
        )
        self.addCleanup(raw.transport.loseConnection)
        raw.transport.write(b"DEBUG SLEEP 3\r\n")
        for _ in range(50):  # until a publish lands behind the sleep
            try:
                yield b.hub.publish(APP, ["news"], "during", "x")
            except BrokerUnavailable:
                break
        else:
            self.fail("no publish failed while Redis slept")
        self.assertEqual(
            b.hub.health()["broker"], f"redis {address} not answering: no reply within 1.5 s"
        )
        self.assertTrue(b.hub.acceptingConnections)
        yield b.whenHealthy()
        yield a.whenHealthy()
        yield a.hub.publish(APP, ["news"], "ev", "after")
        msg = yield client.expect("ev", "news", timeout=10)
        self.assertEqual(msg["data"], "after")
        yield onA.next("ev", "news")
        self.assertFalse(client.closed.called)
        self.assertIsNone(onA.closed)
        deleteKeys(self.prefix + ":*", server.port)


class SubscriberLinkTests(RedisTestCase):
    """A node whose subscriber connection drops while the others carry on."""

    @inlineCallbacks
    def test_linkLostClosesAndRecovers(self) -> Generator[Deferred[Any], Any, None]:
        """
        When B's subscriber connection is killed (A stays healthy and keeps answering publishes
        2xx), B closes its WebSocket connections with 4200 so they reconnect and catch up, and
        refuses new ones while unhealthy; A's subscribers stay. Once B's link is back, a new
        subscriber on B gets what is published through A.
        """
        a, b = yield self.nodes(2)
        port = self.listen(b, Apps([APP]))
        onB = yield self.wsConnect(port, APP.key)
        yield subscribeClient(APP, onB, "news")
        onA = a.connect(APP.id)
        yield a.subscribe(onA, "news")

        yield killSubscriber(a, b)
        code = yield onB.closed.addTimeout(10, reactor)
        self.assertEqual(code, 4200)
        self.assertIsNone(onA.closed)

        yield b.whenHealthy()
        self.assertTrue(b.hub.acceptingConnections)
        late = yield self.wsConnect(port, APP.key)
        yield subscribeClient(APP, late, "news")
        yield a.hub.publish(APP, ["news"], "ev", "after")
        msg = yield late.expect("ev", "news", timeout=10)
        self.assertEqual(msg["data"], "after")
        yield onA.next("ev", "news")

    @inlineCallbacks
    def test_refusedWhileUnhealthy(self) -> Generator[Deferred[Any], Any, None]:
        """
        The moment B's link is lost its registered connections are closed (4200) and the hub
        refuses new ones (4100 at open) until the broker is healthy again.
        """
        a, b = yield self.nodes(2)
        conn = b.connect(APP.id)
        yield b.subscribe(conn, "news")
        closed = conn.whenClosed()
        yield killSubscriber(a, b)
        code = yield closed
        # The node closes its connections in the same turn it learns of the loss.
        self.assertEqual(code, 4200)
        self.assertFalse(b.hub.acceptingConnections)
        self.assertIn("unreachable", b.hub.health()["broker"])
        yield b.whenHealthy()
        self.assertTrue(b.hub.acceptingConnections)


class CacheChannelTests(RedisTestCase):
    """Cache channels (last event replayed on subscribe) across nodes."""

    @inlineCallbacks
    def test_replayedOnAnotherNode(self) -> Generator[Deferred[Any], Any, None]:
        """
        An event published through A on a cache channel nobody is subscribed to anywhere is
        replayed to a subscriber on B after its subscription_succeeded (the last one of two);
        an unpublished cache channel answers pusher:cache_miss. The kept event expires with the
        30 minutes of the local cache.
        """
        a, b = yield self.nodes(2)
        yield a.hub.publish(APP, ["cache-prices"], "price", "41")
        yield a.hub.publish(APP, ["cache-prices"], "price", "42")
        port = self.listen(b, Apps([APP]))
        client = yield self.wsConnect(port, APP.key)
        yield subscribeClient(APP, client, "cache-prices")
        replay = yield client.expect("price", "cache-prices")
        self.assertEqual(replay["data"], "42")
        yield subscribeClient(APP, client, "cache-empty")
        miss = yield client.expect("pusher:cache_miss", "cache-empty")
        self.assertEqual(miss["channel"], "cache-empty")
        self.assertEqual(client.matching("price"), [replay])
        ttl = yield a.broker.command("PTTL", a.broker.cacheKey(APP.id, "cache-prices"))
        self.assertTrue(29 * 60 * 1000 < int(ttl) <= 30 * 60 * 1000, ttl)

    @inlineCallbacks
    def test_clientEventsAndPrivateCache(self) -> Generator[Deferred[Any], Any, None]:
        """Client events on private-cache channels are kept too, and presence-cache channels
        replay across nodes; the Redis copy is read even when this node has none."""
        a, b = yield self.nodes(2)
        sender = a.connect(APP.id)
        yield a.subscribe(sender, "private-cache-doc")
        yield a.hub.clientEvent(sender, "private-cache-doc", "client-edit", '{"v":3}', None)
        yield a.hub.publish(APP, ["presence-cache-room"], "topic", "tea")
        reader = b.connect(APP.id)
        yield b.subscribe(reader, "private-cache-doc")
        yield b.subscribe(reader, "presence-cache-room", "bob")
        frame = b.hub.cachedEvent(APP.id, "private-cache-doc")
        self.assertIsNotNone(frame)
        self.assertIn(b'"client-edit"', frame)
        self.assertIn(b'"topic"', b.hub.cachedEvent(APP.id, "presence-cache-room") or b"")


# -- Redis faults, on a Clock against an in-memory Redis double --------------------------------


def captureLog(case: SynchronousTestCase) -> list[dict[str, Any]]:
    """Every log event emitted until the end of C{case}."""
    return captureLogs(case)


def lines(events: list[dict[str, Any]], since: int = 0) -> list[str]:
    """The log events from index C{since} as text, but the debug ones."""
    return [formatEvent(e) for e in events[since:] if e.get("log_level") is not LogLevel.debug]


class FakeNode:
    """A Redis broker on a Clock against L{FakeRedis}, with a hub and one connection on 'news'."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6390/0",
        password: str | None = None,
        jitter: float = 0.0,
    ) -> None:
        self.clock = Clock()
        self.redis = FakeRedis(self.clock, password)
        self.broker = RedisBroker(
            parseRedisAddress(url),
            self.clock,
            "p",
            name="n",
            jitter=lambda: jitter,
            endpoint=self.redis,
        )
        self.registry = Registry(PushSettings(), self.clock)
        self.hub = Hub(self.registry, self.broker, self.clock)
        self.conn = Conn(APP.id, self.hub.newSocketId())
        self.registry.addConnection(self.conn)
        self.hub.subscribe(self.conn, "news")

    def turn(self, n: int = 10) -> None:
        """Let the double answer (each answer comes on the clock's next turn)."""
        for _ in range(n):
            self.clock.advance(0)

    def start(self) -> None:
        self.broker.start()
        self.turn()


class ReconnectTests(SynchronousTestCase):
    def test_backoffGrowsAndIsCapped(self) -> None:
        """
        A Redis that refuses connections is tried again 0.5 s, 1 s, 2 s ... later, never more
        than 30 s apart; each failed attempt is one log line with the address and the cause.
        """
        events = captureLog(self)
        node = FakeNode()
        node.redis.refuse = True
        node.start()
        node.clock.pump([0.25] * 4 * 300)
        delays = [e["delay"] for e in events if "delay" in e]
        self.assertEqual(delays[:9], [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0])
        self.assertEqual(set(delays[6:]), {30.0})
        text = lines(events)
        self.assertEqual(len(text), len(delays))
        self.assertIn(
            "Redis redis://127.0.0.1:6390/0 refused the connection; commands "
            "connection retrying in 0.5 s",
            text[0],
        )
        self.assertIn("unreachable: refused the connection", node.broker.status)

    def test_jitterOnlyShortens(self) -> None:
        """Jitter takes up to a fifth off a delay, so the cap holds and retries spread out."""
        self.assertEqual(retryDelay(1), 0.5)
        self.assertEqual(retryDelay(7), 30.0)
        self.assertEqual(retryDelay(1000), 30.0)
        for attempt in range(1, 12):
            nominal = retryDelay(attempt)
            shortest = retryDelay(attempt, jitter=0.9999)
            self.assertTrue(0.8 * nominal <= shortest < nominal, (attempt, shortest))
            self.assertLessEqual(shortest, RETRY_MAX)

    def test_backoffResetsOnceReady(self) -> None:
        """
        The first connection logs "connected", a later one "reconnected"; after a connection
        was ready, the next loss is retried after 0.5 s again.
        """
        events = captureLog(self)
        node = FakeNode()
        node.redis.refuse = True
        node.start()
        node.clock.pump([0.5] * 40)  # 20 s: attempts 0.5, 1, 2, 4, 8 s apart
        node.redis.refuse = False
        node.clock.pump([0.5] * 40)
        node.turn()
        self.assertTrue(node.broker.healthy)
        mark = len(events)
        node.redis.kill("n:commands")
        node.turn()
        self.assertEqual([e["delay"] for e in events[mark:] if "delay" in e], [0.5])
        node.clock.advance(0.5)
        node.turn()
        self.assertTrue(node.broker.healthy)
        text = lines(events)
        self.assertEqual(
            [t for t in text if "connected to Redis" in t],
            [
                "connected to Redis redis://127.0.0.1:6390/0 (commands connection)",
                "connected to Redis redis://127.0.0.1:6390/0 (subscriber connection)",
                "reconnected to Redis redis://127.0.0.1:6390/0 (commands connection)",
            ],
        )
        self.assertFalse([t for t in text if "healthy again" in t])

    def test_wrongPasswordIsQuiet(self) -> None:
        """
        A wrong password gives a handful of log lines a minute (not a dozen a second), each
        naming the address without the password, and the cause; /healthz says the same.
        """
        events = captureLog(self)
        node = FakeNode("redis://bob:hunter2@127.0.0.1:6390/0", password="right")
        node.start()
        node.clock.pump([0.1] * 600)
        first = lines(events)
        self.assertTrue(3 <= len(first) <= 8, first)
        for line in first:
            self.assertIn(
                "Redis redis://127.0.0.1:6390/0 refused the password (WRONGPASS); "
                "commands connection retrying in",
                line,
            )
        node.clock.pump([1.0] * 60)
        second = lines(events)[len(first) :]
        self.assertTrue(1 <= len(second) <= 3, second)
        status = node.broker.status
        self.assertIn("refused the password (WRONGPASS)", status)
        self.assertNotIn("hunter2", status + "".join(lines(events)))
        # the subscriber connection waits for a command connection that worked: one line a try
        self.assertEqual(node.redis.commands.count("AUTH"), len(lines(events)))


class CommandLinkTests(SynchronousTestCase):
    def test_commandsLostKeepsClients(self) -> None:
        """
        Losing only the command connection fails publishes with BrokerUnavailable until it is
        back, and closes no client: the subscriber link still brings every event.
        """
        node = FakeNode()
        node.start()
        self.assertTrue(node.broker.healthy)
        node.redis.kill("n:commands")
        node.turn()
        self.failureResultOf(node.hub.publish(APP, ["news"], "ev", "x"), BrokerUnavailable)
        self.assertIn("unreachable: dropped the commands connection", node.hub.health()["broker"])
        self.assertTrue(node.hub.acceptingConnections)
        self.assertIsNone(node.conn.closed)
        node.clock.advance(0.5)
        node.turn()
        self.assertEqual(node.hub.health(), {"broker": "ok"})
        d = node.hub.publish(APP, ["news"], "ev", "x")
        node.turn()
        self.successResultOf(d)
        self.assertIsNone(node.conn.closed)

    def test_subscriberLostClosesClients(self) -> None:
        """Losing the subscriber connection (events may have been missed) closes clients
        with 4200 and refuses new ones until every channel is subscribed again."""
        node = FakeNode()
        node.start()
        node.redis.kill("n:subscriber")
        node.turn()
        self.assertEqual(node.conn.closed, 4200)
        self.assertFalse(node.hub.acceptingConnections)
        node.clock.advance(0.5)
        node.turn()
        self.assertTrue(node.hub.acceptingConnections)
        self.assertEqual(node.redis.commands.count("SUBSCRIBE"), 2)


class StallTests(SynchronousTestCase):
    def test_stallFailsFastAndKeepsClients(self) -> None:
        """
        A Redis that stops answering: a publish fails with BrokerUnavailable 1.5 s after it was
        sent, /healthz answers 503 naming the broker, later publishes fail at once, and no
        client is closed; when Redis answers again the broker is healthy again.
        """
        node = FakeNode()
        node.start()
        health = stubTreq(HealthResource(lambda: succeed(node.hub.health())))
        node.redis.stall()
        d = node.hub.publish(APP, ["news"], "ev", "x")
        node.clock.advance(1.49)
        self.assertNoResult(d)
        node.clock.advance(0.01)
        self.failureResultOf(d, BrokerUnavailable)
        response = self.successResultOf(health.get("http://h/"))
        self.assertEqual(response.code, 503)
        body = self.successResultOf(response.json())
        self.assertEqual(
            body["broker"], "redis://127.0.0.1:6390/0 not answering: no reply within 1.5 s"
        )
        self.assertEqual(body["status"], "degraded")
        self.failureResultOf(node.hub.publish(APP, ["news"], "ev", "x"), BrokerUnavailable)
        node.clock.pump([0.5] * 10)  # 5 s more, still stalled
        self.assertIsNone(node.conn.closed)
        self.assertTrue(node.hub.acceptingConnections)
        node.redis.resume()
        node.turn()
        self.assertEqual(node.hub.health(), {"broker": "ok"})
        d = node.hub.publish(APP, ["news"], "ev", "x")
        node.turn()
        self.successResultOf(d)
        self.assertIsNone(node.conn.closed)

    def test_probeSeesAnIdleStall(self) -> None:
        """With nothing published, the PING probe makes health say so within 2 s."""
        node = FakeNode()
        node.start()
        node.clock.pump([0.1] * 3)  # the stall starts between two PINGs
        node.redis.stall()
        node.clock.pump([0.1] * 20)
        self.assertIn("not answering", node.hub.health()["broker"])
        self.assertIsNone(node.conn.closed)

    def test_longStallRemakesCommandConnection(self) -> None:
        """
        A command connection stalled for 10 s is made again (it may be half-open); the
        subscriber connection and the clients stay; once Redis answers, all is well.
        """
        node = FakeNode()
        node.start()
        subscriber = node.redis.named("n:subscriber")
        node.redis.stall()
        node.clock.pump([0.5] * 30)  # 15 s
        self.assertNotIn("n:commands", [c.name for c in node.redis.connections])
        node.redis.resume()
        node.clock.pump([0.5] * 80)  # the back-off after failed attempts meanwhile
        node.turn()
        self.assertEqual(node.hub.health(), {"broker": "ok"})
        self.assertIn(subscriber, node.redis.connections)
        self.assertIsNone(node.conn.closed)

    def test_stallOverSubscriberSilenceClosesOnce(self) -> None:
        """
        A stall of 30 s or more gives up the subscriber connection too: the clients are closed
        (4200) once, and the node accepts connections again when Redis is back.
        """
        node = FakeNode()
        node.start()
        node.redis.stall()
        node.clock.pump([0.5] * 66)  # 33 s: the PING went out 1 s in
        self.assertEqual(node.conn.closed, 4200)
        self.assertFalse(node.hub.acceptingConnections)
        node.redis.resume()
        node.clock.pump([0.5] * 80)
        node.turn()
        self.assertTrue(node.hub.acceptingConnections)
        self.assertEqual(node.hub.health(), {"broker": "ok"})


class SubscriberProbeTests(SynchronousTestCase):
    def test_silentSubscriberIsRemade(self) -> None:
        """
        A subscriber connection whose replies no longer come (half-open) while the command
        connection answers is made again within a few seconds; its clients are closed (4200:
        events were lost) and the link is back after.
        """
        node = FakeNode()
        node.start()
        node.redis.named("n:subscriber").muted = True
        node.clock.pump([0.5] * 4)
        self.assertIsNone(node.conn.closed)  # 2 s: not yet (it may be a stall)
        node.clock.pump([0.5] * 6)
        self.assertEqual(node.conn.closed, 4200)
        node.clock.pump([0.5] * 2)
        node.turn()
        self.assertTrue(node.hub.acceptingConnections)
        self.assertEqual(node.redis.commands.count("SUBSCRIBE"), 2)

    def test_answeringSubscriberStays(self) -> None:
        """A subscriber connection that answers its PINGs is kept for as long as it does."""
        node = FakeNode()
        node.start()
        subscriber = node.redis.named("n:subscriber")
        node.clock.pump([0.5] * 120)
        self.assertIn(subscriber, node.redis.connections)
        self.assertIsNone(node.conn.closed)
        self.assertGreater(node.redis.commands.count("PING"), 100)
