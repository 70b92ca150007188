"""
Test doubles for code built on pushsvc: fakes that keep everything in memory and answer at once:
L{FakeHub} (an L{IHub} that records), and L{MemoryCluster} with its L{MemoryBroker}s and
L{MemoryState}s (several nodes' brokers and cluster state, as Redis gives them, on one clock).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import IService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from pushsvc.apps import App
from pushsvc.fanout.registry import Registry
from pushsvc.frames import channelKind
from pushsvc.interfaces import (
    CACHE_TTL,
    BrokerUnavailable,
    ChannelInfo,
    IBroker,
    IClusterState,
    IHub,
    MemberEvents,
    Members,
    UserInfo,
)
from pushsvc.local import channelInfo
from pushsvc.redis.state import HEARTBEAT, NODE_TTL

log = Logger()


@dataclass(frozen=True)
class Published:
    """One call of L{FakeHub.publish}."""

    app: App
    channels: list[str]
    event: str
    data: str
    exceptSocketId: str | None = None


@implementer(IHub)
class FakeHub:
    """
    An L{IHub} that records publishes and answers channel questions from dicts a test sets.

    The dicts are shared by every app: C{channels} maps a channel name to its L{ChannelInfo}
    (a name not in it is unoccupied), C{presence} maps a presence channel to its user ids.
    Set C{failPublishes} to make C{publish} fail with L{BrokerUnavailable}, as when Redis is down.
    Every answer is an already-fired Deferred.
    """

    def __init__(self) -> None:
        self.published: list[Published] = []
        self.channels: dict[str, ChannelInfo] = {}
        self.presence: dict[str, list[str]] = {}
        self.terminated: list[tuple[App, str]] = []
        self.claimed: set[tuple[str, str]] = set()
        self.failPublishes = False

    def publish(
        self,
        app: App,
        channels: Iterable[str],
        event: str,
        data: str,
        exceptSocketId: str | None = None,
    ) -> Deferred[None]:
        """Fires with None once recorded; fails with L{BrokerUnavailable} when C{failPublishes}."""
        if self.failPublishes:
            return fail(BrokerUnavailable("the fake broker is down"))
        self.published.append(Published(app, list(channels), event, data, exceptSocketId))
        return succeed(None)

    def channelInfo(self, app: App, channel: str) -> Deferred[ChannelInfo]:
        """Fires with the L{ChannelInfo} set in C{channels}, or an unoccupied one."""
        info = self.channels.get(channel)
        if info is None:
            userCount = 0 if channel.startswith("presence-") else None
            info = ChannelInfo(occupied=False, subscriptionCount=0, userCount=userCount)
        return succeed(info)

    def occupiedChannels(self, app: App, prefix: str | None) -> Deferred[dict[str, ChannelInfo]]:
        """Fires with the occupied channels of C{channels} whose name starts with C{prefix}."""
        return succeed(
            {
                name: info
                for name, info in self.channels.items()
                if info.occupied and name.startswith(prefix or "")
            }
        )

    def cacheInfo(self, app: App, channel: str) -> Deferred[dict[str, Any] | None]:
        """None: the fake keeps no cache events."""
        return succeed(None)

    def presenceUserIds(self, app: App, channel: str) -> Deferred[list[str]]:
        """Fires with the user ids set in C{presence} for C{channel} (none when unset)."""
        return succeed(list(self.presence.get(channel, [])))

    def terminateUserConnections(self, app: App, userId: str) -> Deferred[None]:
        """Records C{(app, userId)} in C{terminated}; fires with None."""
        self.terminated.append((app, userId))
        return succeed(None)

    def claim(self, app: App, key: str, ttl: float) -> Deferred[bool]:
        """
        Fires with True the first time C{key} is claimed for C{app} (C{ttl} is not timed: a key
        stays claimed), else False; fails with L{BrokerUnavailable} when C{failPublishes}.
        """
        if self.failPublishes:
            return fail(BrokerUnavailable("the fake broker is down"))
        if (app.id, key) in self.claimed:
            return succeed(False)
        self.claimed.add((app.id, key))
        return succeed(True)

    def health(self) -> dict[str, str]:
        return {"broker": "the fake broker is down" if self.failPublishes else "ok"}


class MemoryCluster:
    """
    What Redis is to several pushsvc processes, in memory and on one clock: pub/sub between
    L{MemoryBroker}s, claims, the kept events of cache channels, and the cluster state of
    L{MemoryState}s (each node's share, kept alive by its heartbeat, reaped after C{nodeTTL}).
    Nothing is asynchronous: every Deferred has fired when its call returns, so cluster
    semantics (presence across nodes, member events, reaping a dead node) can be tested
    deterministically, with C{task.Clock} for time.

    Set C{down} to make every broker fail publishes, claims and cache reads with
    L{BrokerUnavailable}, as when Redis is unreachable.
    """

    def __init__(
        self, clock: IReactorTime, heartbeat: float = HEARTBEAT, nodeTTL: float = NODE_TTL
    ) -> None:
        self.clock = clock
        self.heartbeat = heartbeat
        self.nodeTTL = nodeTTL
        self.down = False
        self.brokers: list[MemoryBroker] = []
        self._claims: dict[tuple[str, str], float] = {}
        self._cache: dict[tuple[str, str], tuple[bytes, float]] = {}
        # app -> node -> expiry; app -> node -> channel -> local subscription count;
        # app -> channel -> node -> user id -> user info
        self.nodes: dict[str, dict[str, float]] = {}
        self.subs: dict[str, dict[str, dict[str, int]]] = {}
        self.presence: dict[str, dict[str, dict[str, dict[str, UserInfo]]]] = {}
        # node id -> the callable giving that node's open connections per app (countConnections)
        self.connectionCounts: dict[str, Callable[[], Mapping[str, int]]] = {}

    def broker(self) -> MemoryBroker:
        """A new broker on this cluster (one per node)."""
        broker = MemoryBroker(self)
        self.brokers.append(broker)
        return broker

    def state(self, registry: Registry) -> MemoryState:
        """A new cluster state on this cluster, answering for C{registry}'s node."""
        return MemoryState(self, registry)

    def unavailable(self) -> Deferred[Any]:
        """A Deferred failed with L{BrokerUnavailable}, as every call gets while C{down}."""
        return fail(BrokerUnavailable("the in-memory cluster is down"))

    # -- the state of the nodes ----------------------------------------------------------------

    def live(self, appId: str) -> set[str]:
        """The nodes of C{appId} whose heartbeat is not older than C{nodeTTL}."""
        now = self.clock.seconds()
        return {node for node, expiry in self.nodes.get(appId, {}).items() if expiry > now}

    def touch(self, appId: str, node: str) -> bool:
        """Keep C{node} alive for C{nodeTTL}; True when it was not known (reaped, or new)."""
        nodes = self.nodes.setdefault(appId, {})
        absent = node not in nodes
        nodes[node] = self.clock.seconds() + self.nodeTTL
        return absent

    def holders(self, appId: str, channel: str, userId: str) -> set[str]:
        """The live nodes that have C{userId} on presence C{channel}."""
        live = self.live(appId)
        byNode = self.presence.get(appId, {}).get(channel, {})
        return {node for node, users in byNode.items() if userId in users and node in live}

    def members(self, appId: str, channel: str) -> Members:
        live = self.live(appId)
        found: Members = {}
        for node, users in self.presence.get(appId, {}).get(channel, {}).items():
            if node in live:
                found.update(users)
        return found

    def counts(self, appId: str) -> dict[str, int]:
        """Channel -> subscriptions over every live node."""
        live = self.live(appId)
        total: dict[str, int] = {}
        for node, channels in self.subs.get(appId, {}).items():
            if node in live:
                for channel, n in channels.items():
                    total[channel] = total.get(channel, 0) + n
        return {channel: n for channel, n in total.items() if n > 0}

    def remove(self, appId: str, node: str) -> list[tuple[str, str]]:
        """
        Forget C{node}'s share of C{appId}. Returns the (channel, user id) pairs that no live
        node has any more (the members to announce as gone).
        """
        self.nodes.get(appId, {}).pop(node, None)
        self.subs.get(appId, {}).pop(node, None)
        gone = []
        for channel, byNode in self.presence.get(appId, {}).items():
            users = byNode.pop(node, {})
            for userId in users:
                if not self.holders(appId, channel, userId):
                    gone.append((channel, userId))
        return gone

    def reap(self, appId: str) -> list[tuple[str, str]]:
        """Forget the dead nodes of C{appId}; the members no live node has are returned."""
        now = self.clock.seconds()
        dead = [node for node, expiry in self.nodes.get(appId, {}).items() if expiry <= now]
        gone: list[tuple[str, str]] = []
        for node in dead:
            gone += self.remove(appId, node)
        return gone


@implementer(IBroker)
class MemoryBroker:
    """
    One node's L{IBroker} on a L{MemoryCluster}: a publish reaches, at once, every started
    broker of the cluster that has subscribed to its channel. C{cut()} and C{restore()} lose
    and bring back this node's link (its health listener is told, as the Redis broker does).
    """

    def __init__(self, cluster: MemoryCluster) -> None:
        self.cluster = cluster
        self.started = False
        self.linked = True
        self._receive: Callable[[bytes], None] | None = None
        self._listener: Callable[[bool], None] | None = None
        self._channels: set[tuple[str, str]] = set()

    @property
    def healthy(self) -> bool:
        return self.started and self.linked and not self.cluster.down

    @property
    def status(self) -> str:
        if self.cluster.down:
            return "the in-memory cluster is down"
        if not self.started:
            return "not started"
        return "ok" if self.linked else "the link is cut"

    def setReceiver(self, receive: Callable[[bytes], None]) -> None:
        self._receive = receive

    def setHealthListener(self, listener: Callable[[bool], None]) -> None:
        self._listener = listener

    def start(self) -> Deferred[None]:
        self.started = True
        return succeed(None)

    def stop(self) -> Deferred[None]:
        self.started = False
        return succeed(None)

    def cut(self) -> None:
        """Lose the link: publishes stop reaching this node until L{restore}."""
        self.linked = False
        if self._listener is not None:
            self._listener(False)

    def restore(self) -> None:
        self.linked = True
        if self._listener is not None:
            self._listener(True)

    def publish(
        self, appId: str, channel: str, message: bytes, cache: bytes | None = None
    ) -> Deferred[None]:
        """Hands C{message} to every subscribed broker's hub; fires with None."""
        if self.cluster.down:
            return self.cluster.unavailable()
        if cache is not None:
            expiry = self.cluster.clock.seconds() + CACHE_TTL
            self.cluster._cache[(appId, channel)] = (cache, expiry)
        for broker in list(self.cluster.brokers):
            if broker._hears(appId, channel):
                assert broker._receive is not None
                broker._receive(message)
        return succeed(None)

    def _hears(self, appId: str, channel: str) -> bool:
        return self.started and self.linked and (appId, channel) in self._channels

    def cached(self, appId: str, channel: str) -> Deferred[tuple[bytes, float] | None]:
        """Fires with the last cache frame published on C{channel} and its seconds left."""
        if self.cluster.down:
            return self.cluster.unavailable()
        entry = self.cluster._cache.get((appId, channel))
        left = entry[1] - self.cluster.clock.seconds() if entry is not None else 0.0
        return succeed((entry[0], left) if entry is not None and left > 0 else None)

    def subscribe(self, appId: str, channel: str) -> Deferred[None]:
        self._channels.add((appId, channel))
        return succeed(None)

    def unsubscribe(self, appId: str, channel: str) -> Deferred[None]:
        self._channels.discard((appId, channel))
        return succeed(None)

    def claim(self, appId: str, key: str, ttl: float) -> Deferred[bool]:
        """Fires with True the first time C{key} is claimed on the cluster within C{ttl}."""
        if self.cluster.down:
            return self.cluster.unavailable()
        now = self.cluster.clock.seconds()
        held = self.cluster._claims.get((appId, key))
        if held is not None and held > now:
            return succeed(False)
        self.cluster._claims[(appId, key)] = now + ttl
        return succeed(True)


@implementer(IClusterState)
class MemoryState:
    """
    One node's L{IClusterState} on a L{MemoryCluster}, written from its registry as the Redis
    state is: a heartbeat every C{cluster.heartbeat} seconds keeps the node alive and reaps
    dead ones (announcing the members only they had); a node found reaped while alive rewrites
    its share. C{kill()} stops the heartbeat without withdrawing, as C{kill -9} would.
    """

    def __init__(self, cluster: MemoryCluster, registry: Registry) -> None:
        self.cluster = cluster
        self.registry = registry
        self.nodeId = ""
        self.events: MemberEvents | None = None
        self._apps: set[str] = set()
        self._timer = TimerService(cluster.heartbeat, self._beat)
        self._timer.clock = cluster.clock

    def attach(self, nodeId: str, events: MemberEvents) -> None:
        self.nodeId = nodeId
        self.events = events

    def services(self) -> list[IService]:
        return [self._timer]

    def start(self) -> None:
        if not self._timer.running:
            self._timer.startService()

    def kill(self) -> None:
        """Stop the heartbeat and leave this node's share behind (a process killed)."""
        if self._timer.running:
            self._timer.stopService()

    def countConnections(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """Share this node's connection counts (read at once, not per heartbeat as on Redis)."""
        self.cluster.connectionCounts[self.nodeId] = counts

    def connectionsElsewhere(self, appId: str) -> int:
        """Open connections of C{appId} on the other live nodes."""
        live = self.cluster.live(appId)
        return sum(
            counts().get(appId, 0)
            for node, counts in self.cluster.connectionCounts.items()
            if node != self.nodeId and node in live
        )

    def stop(self) -> Deferred[None]:
        """Withdraw this node's share; the members only it had are announced as gone."""
        self.kill()
        for appId in sorted(self._apps):
            self._announceGone(appId, self.cluster.remove(appId, self.nodeId))
        self._apps.clear()
        return succeed(None)

    def _announcer(self) -> MemberEvents:
        assert self.events is not None, "attach() first"
        return self.events

    def _announceGone(self, appId: str, gone: list[tuple[str, str]]) -> None:
        for channel, userId in gone:
            self._announcer().announceMemberGone(appId, channel, userId)

    def _write(self, appId: str) -> Deferred[Any] | None:
        """Before a write: None, or a failure when the cluster is down. Rewrites a lost share."""
        if self.cluster.down:
            return self.cluster.unavailable()
        self._touch(appId)
        return None

    def _touch(self, appId: str) -> None:
        """Keep this node alive; a node found gone while it was registered writes its share."""
        if self.cluster.touch(appId, self.nodeId) and appId in self._apps:
            log.warn(
                "this node's cluster state for app {appId} was gone; rewriting it", appId=appId
            )
            self._sync(appId)
        self._apps.add(appId)

    def _sync(self, appId: str) -> None:
        """Write this node's whole share of C{appId} from the registry; announce newcomers."""
        subs = self.cluster.subs.setdefault(appId, {})
        subs[self.nodeId] = dict(self.registry.channels(appId))
        for channel, count in subs[self.nodeId].items():
            if count <= 0 or channelKind(channel) != "presence":
                continue
            members = self.registry.members(appId, channel)
            for userId, info in members.items():
                known = self.cluster.holders(appId, channel, userId)
                self.cluster.presence.setdefault(appId, {}).setdefault(channel, {}).setdefault(
                    self.nodeId, {}
                )[userId] = info
                if not known:
                    self._announcer().announceMember(appId, channel, userId, info)

    def counted(self, appId: str, channel: str) -> Deferred[None]:
        failed = self._write(appId)
        if failed is not None:
            return failed
        count = self.registry.subscriptionCount(appId, channel)
        self.cluster.subs.setdefault(appId, {}).setdefault(self.nodeId, {})[channel] = count
        return succeed(None)

    def joined(self, appId: str, channel: str, userId: str, userInfo: UserInfo) -> Deferred[bool]:
        failed = self._write(appId)
        if failed is not None:
            return failed
        first = not self.cluster.holders(appId, channel, userId)
        byNode = self.cluster.presence.setdefault(appId, {}).setdefault(channel, {})
        byNode.setdefault(self.nodeId, {})[userId] = userInfo
        return succeed(first)

    def left(self, appId: str, channel: str, userId: str) -> Deferred[bool]:
        failed = self._write(appId)
        if failed is not None:
            return failed
        byNode = self.cluster.presence.get(appId, {}).get(channel, {})
        byNode.get(self.nodeId, {}).pop(userId, None)
        return succeed(not self.cluster.holders(appId, channel, userId))

    def _beat(self) -> None:
        for appId in sorted(self._apps):
            if self.cluster.down:
                return
            self._touch(appId)
            self._announceGone(appId, self.cluster.reap(appId))

    def _ask(self) -> Deferred[Any] | None:
        return self.cluster.unavailable() if self.cluster.down else None

    def members(self, appId: str, channel: str) -> Deferred[Members]:
        failed = self._ask()
        if failed is not None:
            return failed
        return succeed(self.cluster.members(appId, channel))

    def channelInfo(self, appId: str, channel: str) -> Deferred[ChannelInfo]:
        failed = self._ask()
        if failed is not None:
            return failed
        count = self.cluster.counts(appId).get(channel, 0)
        return succeed(channelInfo(channel, count, len(self.cluster.members(appId, channel))))

    def occupied(self, appId: str, prefix: str | None) -> Deferred[dict[str, ChannelInfo]]:
        failed = self._ask()
        if failed is not None:
            return failed
        return succeed(
            {
                channel: channelInfo(channel, n, len(self.cluster.members(appId, channel)))
                for channel, n in self.cluster.counts(appId).items()
                if channel.startswith(prefix or "") and channelKind(channel) != "user"
            }
        )
