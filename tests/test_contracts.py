"""
Contract tests: one mixin per seam, run against every implementation, as the store's are
(L{tests.test_store}).

- L{BrokerContract}: L{LocalBroker}, L{MemoryBroker} (L{pushsvc.testing}) and L{RedisBroker} (the
  machine's Redis, a key prefix per test).
- L{ClusterStateContract}: L{LocalState}, L{MemoryState} and L{RedisState}, driven through a hub
  (their only caller); L{ClusterContract} adds what several nodes share (presence across nodes,
  member_added for a user's first connection anywhere, a dead node reaped), for the memory and
  Redis states.
- L{HubContract}: L{Hub} (on the in-memory cluster) and L{FakeHub}.

The memory implementations answer at once on a L{Clock}; the Redis ones are waited on, each wait
bounded by a timeout.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from pushsvc.apps import App
from pushsvc.fanout.registry import Registry
from pushsvc.hub import Hub
from pushsvc.interfaces import (
    CACHE_TTL,
    BrokerUnavailable,
    ChannelInfo,
    IBroker,
    IClusterState,
    IHub,
    PushSettings,
)
from pushsvc.local import LocalBroker, LocalState
from pushsvc.testing import FakeHub, MemoryBroker, MemoryCluster, MemoryState
from tests.redisutil import REDIS_URL, Conn, HubNode, Node, RedisTestCase

APP = App("a1", "key1", "secret1")
ADDED = "pusher_internal:member_added"
REMOVED = "pusher_internal:member_removed"

Steps = Generator[Deferred[Any], Any, None]


class Received:
    """A broker's receiver: the messages it was handed, and a wait for the next few."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self._waiting: list[tuple[int, Deferred[list[bytes]]]] = []

    def __call__(self, message: bytes) -> None:
        self.messages.append(message)
        for item in list(self._waiting):
            if len(self.messages) >= item[0]:
                self._waiting.remove(item)
                item[1].callback(list(self.messages))

    def atLeast(self, n: int, timeout: float = 10) -> Deferred[list[bytes]]:
        """Fires with every message received once there are C{n} of them."""
        if len(self.messages) >= n:
            return succeed(list(self.messages))
        d: Deferred[list[bytes]] = Deferred()
        self._waiting.append((n, d))
        return d.addTimeout(timeout, reactor)


# -- IBroker ---------------------------------------------------------------------------------


class BrokerContract:
    """
    What every L{IBroker} does. C{brokers(n)} fires with C{n} started brokers of one cluster
    (C{n} is at most C{maxBrokers}); C{sharesCache}: whether a cache frame is kept where every
    process reads it (else the hub remembers, and C{cached} is None).
    """

    maxBrokers = 2
    sharesCache = True

    def brokers(self, n: int) -> Deferred[list[IBroker]]:
        raise NotImplementedError

    @inlineCallbacks
    def test_provides(self) -> Steps:
        """Every broker provides IBroker, and start and stop fire with None."""
        case: Any = self
        (broker,) = yield self.brokers(1)
        verifyObject(IBroker, broker)
        case.assertIsNone((yield broker.stop()))
        case.assertIsNone((yield broker.start()))

    @inlineCallbacks
    def test_publishReachesEverySubscribedBroker(self) -> Steps:
        """A publish fires with None and hands the same bytes to every broker subscribed to
        its channel, the publishing one included, once each."""
        case: Any = self
        brokers = yield self.brokers(self.maxBrokers)
        received = [Received() for _ in brokers]
        for broker, receiver in zip(brokers, received, strict=True):
            broker.setReceiver(receiver)
            yield broker.subscribe(APP.id, "news")
        case.assertIsNone((yield brokers[-1].publish(APP.id, "news", b"one")))
        yield brokers[0].publish(APP.id, "news", b"two")
        for receiver in received:
            case.assertEqual((yield receiver.atLeast(2)), [b"one", b"two"])

    @inlineCallbacks
    def test_cacheFrameKept(self) -> Steps:
        """The cache frame of a publish is what C{cached} answers on every broker (with the
        seconds it has left, at most CACHE_TTL), or None where the hub keeps it."""
        case: Any = self
        brokers = yield self.brokers(self.maxBrokers)
        for broker in brokers:
            broker.setReceiver(Received())
        case.assertIsNone((yield brokers[-1].cached(APP.id, "cache-x")))
        yield brokers[0].publish(APP.id, "cache-x", b"envelope", b"frame")
        for broker in brokers:
            kept = yield broker.cached(APP.id, "cache-x")
            if not self.sharesCache:
                case.assertIsNone(kept)
                continue
            frame, left = kept
            case.assertEqual(frame, b"frame")
            case.assertTrue(0 < left <= CACHE_TTL, left)

    @inlineCallbacks
    def test_claimOncePerKeyAcrossBrokers(self) -> Steps:
        """A key is claimed once within its ttl on the whole cluster; another key, or the
        same key of another app, is a claim of its own."""
        case: Any = self
        brokers = yield self.brokers(self.maxBrokers)
        case.assertTrue((yield brokers[0].claim(APP.id, "k", 60.0)))
        for broker in brokers:
            case.assertFalse((yield broker.claim(APP.id, "k", 60.0)))
        case.assertTrue((yield brokers[-1].claim(APP.id, "other", 60.0)))
        case.assertTrue((yield brokers[-1].claim("a2", "k", 60.0)))


class LocalBrokerTests(BrokerContract, TestCase):
    maxBrokers = 1
    sharesCache = False

    def brokers(self, n: int) -> Deferred[list[IBroker]]:
        assert n == 1, "one process has one LocalBroker"
        return succeed([LocalBroker(Clock())])


class MemoryBrokerTests(BrokerContract, TestCase):
    def brokers(self, n: int) -> Deferred[list[IBroker]]:
        cluster = MemoryCluster(Clock())
        made: list[IBroker] = []
        for _ in range(n):
            broker = cluster.broker()
            broker.start()
            made.append(broker)
        return succeed(made)

    def test_unsubscribedHearsNothing(self) -> None:
        """A publish reaches no broker that is not subscribed to its channel, or that was
        stopped or cut off; one that is down fails every call with BrokerUnavailable."""
        cluster = MemoryCluster(Clock())
        a, b = cluster.broker(), cluster.broker()
        heardA, heardB = Received(), Received()
        a.setReceiver(heardA)
        b.setReceiver(heardB)
        a.start()
        b.start()
        a.subscribe(APP.id, "news")
        self.successResultOf(b.publish(APP.id, "news", b"1"))
        self.successResultOf(b.publish(APP.id, "other", b"2"))
        b.subscribe(APP.id, "news")
        b.unsubscribe(APP.id, "news")
        links: list[bool] = []
        a.setHealthListener(links.append)
        a.cut()
        self.assertFalse(a.healthy)
        self.successResultOf(b.publish(APP.id, "news", b"3"))
        a.restore()
        self.assertEqual(links, [False, True])
        self.assertEqual((heardA.messages, heardB.messages), ([b"1"], []))
        cluster.down = True
        self.failureResultOf(b.publish(APP.id, "news", b"4"), BrokerUnavailable)
        self.failureResultOf(b.claim(APP.id, "k", 1.0), BrokerUnavailable)
        self.failureResultOf(b.cached(APP.id, "cache-x"), BrokerUnavailable)
        self.assertNotEqual(b.status, "ok")

    def test_claimAndCacheExpire(self) -> None:
        """Claims and kept cache frames last their time on the cluster's clock."""
        clock = Clock()
        cluster = MemoryCluster(clock)
        broker = cluster.broker()
        broker.setReceiver(Received())
        broker.start()
        self.assertTrue(self.successResultOf(broker.claim(APP.id, "k", 10.0)))
        broker.publish(APP.id, "cache-x", b"e", b"frame")
        clock.advance(9.9)
        self.assertFalse(self.successResultOf(broker.claim(APP.id, "k", 10.0)))
        clock.advance(0.1)
        self.assertTrue(self.successResultOf(broker.claim(APP.id, "k", 10.0)))
        clock.advance(CACHE_TTL - 10.0)
        self.assertIsNone(self.successResultOf(broker.cached(APP.id, "cache-x")))


class RedisBrokerTests(BrokerContract, RedisTestCase):
    @inlineCallbacks
    def brokers(self, n: int) -> Generator[Deferred[Any], Any, list[IBroker]]:
        nodes = yield gatherResults([self.node() for _ in range(n)])
        return [node.broker for node in nodes]


# -- IClusterState ---------------------------------------------------------------------------


class MemoryNode(HubNode):
    """One node on a L{MemoryCluster}, built as L{tests.redisutil.Node} is, on a Clock."""

    def __init__(self, cluster: MemoryCluster) -> None:
        assert isinstance(cluster.clock, Clock)
        self.clock = cluster.clock
        self.registry = Registry(PushSettings(), cluster.clock)
        self.broker: MemoryBroker = cluster.broker()
        self.state: MemoryState = cluster.state(self.registry)
        self.hub = Hub(self.registry, self.broker, cluster.clock, self.state)

    def start(self) -> None:
        self.broker.start()
        self.state.start()

    def pump(self) -> None:
        """Let the fan-out write what it queued for later turns of the (Clock) reactor."""
        for _ in range(10):
            self.clock.advance(0)


class LocalNode(MemoryNode):
    """One process alone: a LocalBroker and a LocalState."""

    def __init__(self) -> None:
        clock = self.clock = Clock()
        self.registry = Registry(PushSettings(), clock)
        self.broker = LocalBroker(clock)  # type: ignore[assignment]  # the one-process parts
        self.state = LocalState(self.registry)  # type: ignore[assignment]  # the one-process parts
        self.hub = Hub(self.registry, self.broker, clock, self.state)

    def start(self) -> None:
        pass


class ClusterStateContract:
    """
    What every L{IClusterState} answers about one node, driven through its hub (its only
    caller). C{nodes(n)} fires with C{n} started nodes of one cluster (C{registry}, C{state},
    C{hub}, C{connect}, C{subscribe} as L{tests.redisutil.Node} has them).
    """

    def makeNodes(self, n: int) -> Deferred[list[Any]]:
        raise NotImplementedError

    def next(self, node: Any, conn: Conn, event: str, timeout: float = 10) -> Deferred[Any]:
        """Fires with C{conn}'s next message C{event} on presence-room (a node on a Clock
        first runs its fan-out, which writes in later turns under load)."""
        pump = getattr(node, "pump", None)
        if pump is not None:
            pump()
        return conn.next(event, "presence-room", timeout)

    def quiet(self, *nodes: Any) -> None:
        """Run the fan-out of nodes on a Clock, so that nothing is left unwritten."""
        for node in nodes:
            pump = getattr(node, "pump", None)
            if pump is not None:
                pump()

    @inlineCallbacks
    def test_provides(self) -> Steps:
        """Every cluster state provides IClusterState."""
        (node,) = yield self.makeNodes(1)
        verifyObject(IClusterState, node.state)

    @inlineCallbacks
    def test_countsAndOccupied(self) -> Steps:
        """Subscriptions are counted per channel; occupied() lists the occupied channels
        that start with the prefix, never a #server-to-user- one; the last unsubscribe
        leaves a channel unoccupied."""
        case: Any = self
        (node,) = yield self.makeNodes(1)
        a, b = node.connect(APP.id), node.connect(APP.id)
        yield node.subscribe(a, "news")
        yield node.subscribe(b, "news")
        yield node.subscribe(a, "notes")
        yield node.subscribe(a, "#server-to-user-u1")
        info = yield node.state.channelInfo(APP.id, "news")
        case.assertEqual(info, ChannelInfo(occupied=True, subscriptionCount=2))
        case.assertEqual(sorted((yield node.state.occupied(APP.id, None))), ["news", "notes"])
        case.assertEqual(
            (yield node.state.occupied(APP.id, "note")),
            {"notes": ChannelInfo(occupied=True, subscriptionCount=1)},
        )
        node.hub.unsubscribe(a, "notes")
        yield node.state.counted(APP.id, "notes")
        case.assertEqual(
            (yield node.state.channelInfo(APP.id, "notes")),
            ChannelInfo(occupied=False, subscriptionCount=0),
        )
        case.assertEqual(list((yield node.state.occupied(APP.id, "note"))), [])

    @inlineCallbacks
    def test_presenceMembers(self) -> Steps:
        """members() gives user id -> user info; a presence channel's info counts users, a
        user with two connections once; joined fires True for a user's first connection."""
        case: Any = self
        (node,) = yield self.makeNodes(1)
        a, b, c = (node.connect(APP.id) for _ in range(3))
        yield node.subscribe(a, "presence-room", "u1", {"name": "Ann"})
        yield node.subscribe(b, "presence-room", "u1", {"name": "Ann"})
        yield node.subscribe(c, "presence-room", "u2", None)
        case.assertEqual(
            (yield node.state.members(APP.id, "presence-room")),
            {"u1": {"name": "Ann"}, "u2": None},
        )
        case.assertEqual(
            (yield node.state.channelInfo(APP.id, "presence-room")),
            ChannelInfo(occupied=True, subscriptionCount=3, userCount=2),
        )
        case.assertTrue((yield node.state.joined(APP.id, "presence-other", "u9", 1)))
        case.assertTrue((yield node.state.left(APP.id, "presence-other", "u9")))

    @inlineCallbacks
    def test_memberEventsOncePerUser(self) -> Steps:
        """member_added is sent for a user's first connection on a presence channel and
        member_removed when its last one leaves, to the other members only."""
        case: Any = self
        (node,) = yield self.makeNodes(1)
        watcher, first, second = (node.connect(APP.id) for _ in range(3))
        yield node.subscribe(watcher, "presence-room", "w", None)
        yield node.subscribe(first, "presence-room", "u1", {"n": 1})
        added = yield self.next(node, watcher, ADDED)
        case.assertEqual(added["data"], {"user_id": "u1", "user_info": {"n": 1}})
        yield node.subscribe(second, "presence-room", "u1", {"n": 1})
        node.hub.unsubscribe(first, "presence-room")
        node.hub.unsubscribe(second, "presence-room")
        removed = yield self.next(node, watcher, REMOVED)
        case.assertEqual(removed["data"], {"user_id": "u1"})
        self.quiet(node)
        case.assertEqual(watcher.events(ADDED) + watcher.events(REMOVED), [])
        # (The watcher's own member_added may reach them: they subscribed before it came.)
        aboutU1 = [m for m in first.events(ADDED) + second.events(ADDED) if "u1" in str(m)]
        case.assertEqual(aboutU1, [])


class ClusterContract(ClusterStateContract):
    """
    What several nodes' states share. C{settle()} fires once what was written has reached every
    node; C{reaped(node)} stops C{node}'s heartbeat without withdrawing its share (a killed
    process) and fires once the others may reap it.
    """

    def settle(self, nodes: list[Any]) -> Deferred[None]:
        return succeed(None)

    def killed(self, node: Any) -> Deferred[None]:
        raise NotImplementedError

    @inlineCallbacks
    def test_presenceAcrossNodes(self) -> Steps:
        """Members and subscription counts are those of every node, whichever node is asked."""
        case: Any = self
        a, b = yield self.makeNodes(2)
        yield a.subscribe(a.connect(APP.id), "presence-room", "u1", "one")
        yield b.subscribe(b.connect(APP.id), "presence-room", "u2", "two")
        yield b.subscribe(b.connect(APP.id), "presence-room", "u1", "one")
        yield self.settle([a, b])
        for node in (a, b):
            case.assertEqual(
                (yield node.state.members(APP.id, "presence-room")), {"u1": "one", "u2": "two"}
            )
            case.assertEqual(
                (yield node.state.channelInfo(APP.id, "presence-room")),
                ChannelInfo(occupied=True, subscriptionCount=3, userCount=2),
            )

    @inlineCallbacks
    def test_memberAddedForFirstConnectionAnywhere(self) -> Steps:
        """A user's first connection on any node is announced (member_added) to every node's
        members; its connections on other nodes are not; member_removed only when its last
        connection anywhere has gone."""
        case: Any = self
        a, b = yield self.makeNodes(2)
        watchA, watchB = a.connect(APP.id), b.connect(APP.id)
        yield a.subscribe(watchA, "presence-room", "wa", None)
        yield b.subscribe(watchB, "presence-room", "wb", None)
        yield self.next(a, watchA, ADDED)  # wb
        onA, onB = a.connect(APP.id), b.connect(APP.id)
        yield b.subscribe(onB, "presence-room", "u1", "x")
        for watcher in (watchA, watchB):
            added = yield self.next(a, watcher, ADDED)
            case.assertEqual(added["data"]["user_id"], "u1")
        yield a.subscribe(onA, "presence-room", "u1", "x")
        b.hub.unsubscribe(onB, "presence-room")
        yield self.settle([a, b])
        # A marker published after both: ordered behind anything either node announced.
        for node in (a, b):
            yield node.hub.publish(APP, ["presence-room"], "client-marker", "{}")
            yield self.next(a, watchA, "client-marker")
            yield self.next(a, watchB, "client-marker")
        self.quiet(a, b)
        case.assertEqual(watchA.events(ADDED) + watchA.events(REMOVED), [])
        case.assertEqual(watchB.events(ADDED) + watchB.events(REMOVED), [])
        a.hub.unsubscribe(onA, "presence-room")
        for watcher in (watchA, watchB):
            removed = yield self.next(a, watcher, REMOVED)
            case.assertEqual(removed["data"], {"user_id": "u1"})

    @inlineCallbacks
    def test_deadNodeReaped(self) -> Steps:
        """A node that stops beating (killed) is reaped by the others: its subscriptions stop
        counting and members only it had are announced gone, once."""
        case: Any = self
        a, b = yield self.makeNodes(2)
        watcher = a.connect(APP.id)
        yield a.subscribe(watcher, "presence-room", "w", None)
        yield b.subscribe(b.connect(APP.id), "presence-room", "u1", None)
        yield b.subscribe(b.connect(APP.id), "presence-room", "w", None)
        yield self.next(a, watcher, ADDED)  # u1
        yield self.killed(b)
        removed = yield self.next(a, watcher, REMOVED, timeout=15)
        case.assertEqual(removed["data"], {"user_id": "u1"})
        case.assertEqual((yield a.state.members(APP.id, "presence-room")), {"w": None})
        case.assertEqual(
            (yield a.state.channelInfo(APP.id, "presence-room")),
            ChannelInfo(occupied=True, subscriptionCount=1, userCount=1),
        )
        self.quiet(a)
        case.assertEqual(watcher.events(REMOVED), [])

    @inlineCallbacks
    def test_stopWithdraws(self) -> Steps:
        """A node that stops withdraws its share at once: the others count without it."""
        case: Any = self
        a, b = yield self.makeNodes(2)
        yield a.subscribe(a.connect(APP.id), "news")
        yield b.subscribe(b.connect(APP.id), "news")
        yield self.settle([a, b])
        case.assertEqual((yield a.state.channelInfo(APP.id, "news")).subscriptionCount, 2)
        yield b.state.stop()
        case.assertEqual((yield a.state.channelInfo(APP.id, "news")).subscriptionCount, 1)


class LocalStateTests(ClusterStateContract, TestCase):
    def makeNodes(self, n: int) -> Deferred[list[Any]]:
        assert n == 1, "LocalState is one process"
        return succeed([LocalNode()])


class MemoryStateTests(ClusterContract, TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.cluster = MemoryCluster(self.clock, heartbeat=1.0, nodeTTL=5.0)

    def makeNodes(self, n: int) -> Deferred[list[Any]]:
        made = [MemoryNode(self.cluster) for _ in range(n)]
        for node in made:
            node.start()
        return succeed(made)

    def killed(self, node: Any) -> Deferred[None]:
        node.state.kill()
        node.broker.stop()
        for _ in range(6):  # past the TTL, a heartbeat at a time
            self.clock.advance(1.0)
        return succeed(None)

    def test_reapedWhileAliveRewritesItsShare(self) -> None:
        """A node reaped while it could not beat (its heartbeat late past the TTL) writes its
        whole share again at its next heartbeat, and its members are announced again."""
        a, b = self.successResultOf(self.makeNodes(2))
        watcher = a.connect(APP.id)
        a.subscribe(watcher, "presence-room", "w", None)
        b.subscribe(b.connect(APP.id), "presence-room", "u1", None)
        self.next(a, watcher, ADDED)
        b.state.kill()
        for _ in range(6):
            self.clock.advance(1.0)
        self.successResultOf(self.next(a, watcher, REMOVED))
        b.state.start()  # beats at once: finds itself gone
        added = self.successResultOf(self.next(a, watcher, ADDED))
        self.assertEqual(added["data"]["user_id"], "u1")
        self.assertEqual(
            self.successResultOf(a.state.members(APP.id, "presence-room")), {"w": None, "u1": None}
        )

    def test_downFailsQuestions(self) -> None:
        """While the cluster is down, questions fail with BrokerUnavailable."""
        (node,) = self.successResultOf(self.makeNodes(1))
        self.cluster.down = True
        self.failureResultOf(node.state.members(APP.id, "presence-x"), BrokerUnavailable)
        self.failureResultOf(node.state.channelInfo(APP.id, "x"), BrokerUnavailable)
        self.failureResultOf(node.state.occupied(APP.id, None), BrokerUnavailable)


class RedisStateTests(ClusterContract, RedisTestCase):
    """The Redis state on the machine's Redis (heartbeat 0.2 s, node TTL 1 s)."""

    timeout = 60

    def makeNodes(self, n: int) -> Deferred[list[Any]]:
        return gatherResults([self.node(REDIS_URL) for _ in range(n)])

    @inlineCallbacks
    def settle(self, nodes: list[Any]) -> Steps:
        # Counts are written on the next reactor turn; a flush per node waits for them.
        for node in nodes:
            yield node.state.counted(APP.id, "-settle")

    def killed(self, node: Node) -> Deferred[None]:
        stopped: Deferred[None] = node.stop(retire=False)
        return stopped


# -- IHub ------------------------------------------------------------------------------------


class HubContract:
    """
    What every L{IHub} answers. C{hub()} is the hub under test; C{occupy(channel, users)}
    subscribes one connection per user (or one with no user) to C{channel}; C{breakBroker()}
    makes the broker refuse publishes; C{published()} lists (channel, event, data) published.
    """

    def hub(self) -> IHub:
        raise NotImplementedError

    def occupy(self, channel: str, users: list[str]) -> None:
        raise NotImplementedError

    def breakBroker(self) -> None:
        raise NotImplementedError

    def published(self) -> list[tuple[str, str, str]]:
        raise NotImplementedError

    def test_provides(self) -> None:
        """Every hub provides IHub."""
        verifyObject(IHub, self.hub())

    def test_publish(self) -> None:
        """A publish fires with None once accepted, for every channel given."""
        case: Any = self
        case.assertIsNone(case.successResultOf(self.hub().publish(APP, ["a", "b"], "e", "d")))
        case.assertEqual(self.published(), [("a", "e", "d"), ("b", "e", "d")])

    def test_publishFailsWhenBrokerIsDown(self) -> None:
        """A publish the broker cannot carry fails with BrokerUnavailable (a 503), and so does
        a claim; health names the broker."""
        case: Any = self
        self.breakBroker()
        case.failureResultOf(self.hub().publish(APP, ["a"], "e", "d"), BrokerUnavailable)
        case.failureResultOf(self.hub().claim(APP, "k", 60.0), BrokerUnavailable)
        case.assertNotEqual(self.hub().health()["broker"], "ok")

    def test_channelInfo(self) -> None:
        """An unknown channel is unoccupied (a presence one with 0 users); an occupied one
        has its subscriptions and, for presence, its users."""
        case: Any = self
        hub = self.hub()
        self.occupy("news", [])
        self.occupy("presence-room", ["u1", "u2"])
        case.assertEqual(case.successResultOf(hub.channelInfo(APP, "x")), ChannelInfo(False, 0))
        case.assertEqual(
            case.successResultOf(hub.channelInfo(APP, "presence-x")), ChannelInfo(False, 0, 0)
        )
        case.assertEqual(case.successResultOf(hub.channelInfo(APP, "news")), ChannelInfo(True, 1))
        case.assertEqual(
            case.successResultOf(hub.channelInfo(APP, "presence-room")), ChannelInfo(True, 2, 2)
        )
        case.assertEqual(
            sorted(case.successResultOf(hub.presenceUserIds(APP, "presence-room"))), ["u1", "u2"]
        )
        case.assertEqual(
            case.successResultOf(hub.occupiedChannels(APP, "ne")), {"news": ChannelInfo(True, 1)}
        )
        case.assertEqual(hub.health()["broker"], "ok")

    def test_claim(self) -> None:
        """A key is claimed once for an app; fires True, then False."""
        case: Any = self
        hub = self.hub()
        case.assertTrue(case.successResultOf(hub.claim(APP, "k", 60.0)))
        case.assertFalse(case.successResultOf(hub.claim(APP, "k", 60.0)))
        case.assertTrue(case.successResultOf(hub.claim(APP, "other", 60.0)))

    def test_terminateUserConnections(self) -> None:
        """terminateUserConnections fires with None once it is on its way to every node."""
        case: Any = self
        case.assertIsNone(case.successResultOf(self.hub().terminateUserConnections(APP, "u1")))


class FakeHubTests(HubContract, TestCase):
    def setUp(self) -> None:
        self.fake = FakeHub()

    def hub(self) -> IHub:
        return self.fake

    def occupy(self, channel: str, users: list[str]) -> None:
        self.fake.channels[channel] = ChannelInfo(
            occupied=True,
            subscriptionCount=max(len(users), 1),
            userCount=len(users) if channel.startswith("presence-") else None,
        )
        if users:
            self.fake.presence[channel] = list(users)

    def breakBroker(self) -> None:
        self.fake.failPublishes = True

    def published(self) -> list[tuple[str, str, str]]:
        return [(c, p.event, p.data) for p in self.fake.published for c in p.channels]


class HubTests(HubContract, TestCase):
    """The real hub, on the in-memory cluster (whose broker can be made to fail)."""

    def setUp(self) -> None:
        self.cluster = MemoryCluster(Clock())
        self.node = MemoryNode(self.cluster)
        self.node.start()
        self.listener = self.node.connect(APP.id)
        for channel in ("a", "b"):
            self.node.subscribe(self.listener, channel)

    def hub(self) -> IHub:
        return self.node.hub

    def occupy(self, channel: str, users: list[str]) -> None:
        everyone: list[str | None] = [*users] if users else [None]
        for user in everyone:
            conn = self.node.connect(APP.id)
            self.node.subscribe(conn, channel, user, None)

    def breakBroker(self) -> None:
        self.cluster.down = True

    def published(self) -> list[tuple[str, str, str]]:
        self.node.pump()
        return [(m["channel"], m["event"], m["data"]) for m in self.listener.messages]
