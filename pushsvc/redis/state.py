"""
Cluster state: subscription counts and presence members of every process.

L{pushsvc.local.LocalState} answers from this process's registry (one process, no Redis).
L{RedisState} keeps each process's share in Redis, written only by that process from its own
registry (so it cannot drift), and answers for the whole cluster. Keys, with
C{P = {prefix}:{appId}}:

    P:nodes                    ZSET node id -> expiry (Redis TIME in ms): a heartbeat every
                               second pushes it C{nodeTTL} (5 s) ahead
    P:subs:{node}              HASH channel -> local subscription count of that node
    P:pres:{channel}:{node}    HASH user id -> user info (JSON) of that node's members
    P:pres:{channel}:nodes     SET of nodes with members on the channel
    P:node:{node}:pres         SET of presence channels the node has members on
    P:conns                    HASH node -> "open connections of the app:expiry (ms)", written
                               every heartbeat for the apps with a max_connections (see
                               L{RedisState.countConnections})

Readers count only nodes whose expiry is in the future, so a process that dies takes its
subscriptions and members with it after C{nodeTTL} at most. The next heartbeat of any survivor
reaps the dead node (atomically: exactly one survivor does it) and announces member_removed for
the users that no live node still has. When no node was heard of for more than half of
C{nodeTTL} (Redis stalled, or nobody could reach it), the next write of any node moves every
node's expiry on by that gap before anything is judged by it: the nodes could not beat
meanwhile, so a stall of any length reaps no live node (clients see no member_removed /
member_added flicker); a node that died just before is reaped up to that gap later.

Channel occupancy is decided the same way: C{COUNTS} answers which channels went from 0 to some
subscribers, or to 0, counting every node not yet reaped; C{BEAT} answers the channels a reaped
node was the last to hold. Each is announced (the hub's webhooks) by the one node told.

Member events are decided by Lua scripts, atomically: C{JOIN} answers "new" only when no other
live node has the user on the channel, C{LEAVE} answers "gone" only when no other live node has
it. After a reconnect (Redis restarted, or this node reaped while it could not reach Redis) the
C{SYNC} script replaces this node's whole share from the registry and answers which users
appeared in or vanished from the cluster-wide member list, which are then announced.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.application.internet import TimerService
from twisted.application.service import IService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pushsvc.fanout.registry import Registry
from pushsvc.frames import channelKind
from pushsvc.interfaces import BrokerUnavailable, ChannelInfo, IClusterState, MemberEvents
from pushsvc.local import channelInfo
from pushsvc.redis import luaSource
from pushsvc.waiters import Waiters

if TYPE_CHECKING:  # txredisapi installs the global reactor when imported
    from pushsvc.redis.broker import RedisBroker

log = Logger()

HEARTBEAT = 1.0  # seconds between heartbeats (and reaping of dead nodes)
NODE_TTL = 5.0  # seconds after its last heartbeat that a node counts as dead

SCRIPT_NAMES = (
    "join",
    "leave",
    "counts",
    "sync",
    "beat",
    "members",
    "channel",
    "channels",
    "conns",
)


def _pairs(flat: list[Any], size: int) -> list[list[Any]]:
    return [flat[i : i + size] for i in range(0, len(flat), size)]


@implementer(IClusterState)
class RedisState:
    """
    The cluster-wide state in Redis, through the command connection of C{broker}. Every change
    of this process is written from its registry; a heartbeat keeps this node alive and reaps
    dead ones; a reconnect rewrites this node's whole share.
    """

    def __init__(
        self,
        broker: RedisBroker,
        registry: Registry,
        clock: IReactorTime,
        heartbeat: float = HEARTBEAT,
        nodeTTL: float = NODE_TTL,
    ) -> None:
        self.broker = broker
        self.registry = registry
        self.clock = clock
        self.nodeTTL = nodeTTL
        self.nodeId = ""
        self.events: MemberEvents | None = None  # the hub (attach)
        prelude = luaSource("prelude")
        for name in SCRIPT_NAMES:
            broker.addScript(name, prelude + luaSource(name))
        broker.whenReady(self._reconnected)
        self._apps: set[str] = set()  # apps this node has ever had state for
        self._registered: set[str] = set()  # apps for which Redis has acknowledged this node
        self._dirty: dict[str, dict[str, None]] = {}
        self._flushWaiters: Waiters[None] | None = None  # None: no flush scheduled
        self._pending: set[Deferred[None]] = set()  # fire when a write finished
        self._timer = TimerService(heartbeat, self._beat)
        self._timer.clock = clock
        self._stopped = False
        self._connectionCounts: Callable[[], Mapping[str, int]] = dict
        self._elsewhere: dict[str, int] = {}

    def attach(self, nodeId: str, events: MemberEvents) -> None:
        self.nodeId = nodeId
        self.events = events

    def services(self) -> list[IService]:
        """The heartbeat (also reaps dead nodes), a TimerService for the owner's service tree."""
        return [self._timer]

    def start(self) -> None:
        """Run the heartbeat without a service tree (tests, tools)."""
        if not self._timer.running:
            self._timer.startService()

    def stop(self) -> Deferred[None]:
        """Wait for the writes in flight, then withdraw this node's share. Fires with None."""
        self._stopped = True
        stopped = self._timer.stopService() if self._timer.running else None
        waits = [w for w in (stopped, *self._pending) if w is not None]
        d: Deferred[Any] = DeferredList(waits, consumeErrors=True)
        d.addCallback(
            lambda _: DeferredList(
                [self._sync(appId, retire=True) for appId in sorted(self._apps)], consumeErrors=True
            )
        )
        return d.addCallback(lambda _: None)

    def _announcer(self) -> MemberEvents:
        assert self.events is not None, "attach() first"
        return self.events

    # -- writes --------------------------------------------------------------------------------

    def _args(self, appId: str, *more: Any) -> list[Any]:
        return [f"{self.broker.prefix}:{appId}", self.nodeId, int(self.nodeTTL * 1000), *more]

    def _run(self, name: str, appId: str, *more: Any) -> Deferred[Any]:
        self._apps.add(appId)
        d = self.broker.script(name, [], self._args(appId, *more))
        finished: Deferred[None] = Deferred()
        self._pending.add(finished)

        def done(result: Any) -> Any:
            self._pending.discard(finished)
            finished.callback(None)
            return result

        return d.addBoth(done)

    def _checkAbsent(self, appId: str, absent: Any) -> None:
        """This node was missing from Redis: reaped while away, or Redis lost its data."""
        if int(absent) and appId in self._registered:
            log.warn(
                "this node's cluster state for app {appId} was gone; rewriting it", appId=appId
            )
            self._sync(appId)
        self._registered.add(appId)

    def _logFailure(self, what: str) -> Callable[[Failure], None]:
        def failed(f: Failure) -> None:
            if f.check(BrokerUnavailable):
                log.debug(
                    "cluster state {what} not written: {error}",
                    what=what,
                    error=f.getErrorMessage(),
                )
            else:
                log.error(
                    "cluster state {what} failed: {error}", what=what, error=f.getErrorMessage()
                )

        return failed

    def counted(self, appId: str, channel: str) -> Deferred[None]:
        """Written with the other changes of this reactor turn; fires with None when written."""
        self._dirty.setdefault(appId, {})[channel] = None
        if self._flushWaiters is None:
            self._flushWaiters = Waiters()
            self.clock.callLater(0, self._flush)
        return self._flushWaiters.wait()

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, {}
        waiters, self._flushWaiters = self._flushWaiters or Waiters[None](), None
        writes = []
        for appId, channels in dirty.items():
            args: list[Any] = []
            for channel in channels:
                args += [channel, self.registry.subscriptionCount(appId, channel)]
            d = self._run("counts", appId, *args)
            d.addCallback(self._counted, appId)
            writes.append(d.addErrback(self._logFailure("counts")))
        done: Deferred[Any] = DeferredList(writes)

        def wake(_: object) -> None:
            waiters.fire()

        done.addCallback(wake)

    def _counted(self, reply: list[Any], appId: str) -> None:
        self._checkAbsent(appId, reply[0])
        for channel, count in _pairs(reply[2], 2):
            self._announcer().announceCount(appId, channel, int(count))
        for sign, channel in _pairs(reply[1], 2):
            if sign == "+":
                self._announcer().announceOccupied(appId, channel)
            else:
                self._announcer().announceVacated(appId, channel)

    def joined(self, appId: str, channel: str, userId: str, userInfo: Any) -> Deferred[bool]:
        d = self._run("join", appId, channel, userId, json.dumps(userInfo))

        def result(reply: list[Any]) -> bool:
            self._checkAbsent(appId, reply[0])
            return bool(int(reply[1]))

        return d.addCallback(result)

    def left(self, appId: str, channel: str, userId: str) -> Deferred[bool]:
        d = self._run("leave", appId, channel, userId)

        def result(reply: list[Any]) -> bool:
            self._checkAbsent(appId, reply[0])
            return bool(int(reply[1]))

        return d.addCallback(result)

    def _localShare(self, appId: str) -> dict[str, Any]:
        subs: dict[str, int] = {}
        pres: dict[str, dict[str, str]] = {}
        for channel, count in self.registry.channels(appId):
            subs[channel] = count
            if channelKind(channel) == "presence":
                members = self.registry.members(appId, channel)
                if members:
                    pres[channel] = {u: json.dumps(info) for u, info in members.items()}
        return {"subs": subs, "pres": pres}

    def _sync(self, appId: str, retire: bool = False) -> Deferred[None]:
        """Replace this node's share of C{appId} with the registry's; announce what changed."""
        share = {"subs": {}, "pres": {}} if retire else self._localShare(appId)
        d = self._run("sync", appId, json.dumps(share), "1" if retire else "0")

        def synced(reply: list[Any]) -> None:
            if retire:
                self._registered.discard(appId)
            else:
                self._registered.add(appId)
            for sign, channel, userId, info in _pairs(reply[1], 4):
                if sign == "+":
                    self._announcer().announceMember(appId, channel, userId, json.loads(info))
                else:
                    self._announcer().announceMemberGone(appId, channel, userId)

        return d.addCallback(synced).addErrback(self._logFailure("sync"))

    def _reconnected(self) -> None:
        if self._stopped:
            return
        for appId in sorted(self._apps):
            self._sync(appId)

    def _beat(self) -> None:
        for appId in sorted(self._registered):
            d = self._run("beat", appId)
            d.addCallback(self._beaten, appId)
            d.addErrback(self._logFailure("heartbeat"))
        for appId, count in self._connectionCounts().items():
            d = self.broker.script("conns", [], self._args(appId, count))
            d.addCallback(self._countedElsewhere, appId)
            d.addErrback(self._logFailure("connection counts"))

    def _countedElsewhere(self, total: Any, appId: str) -> None:
        self._elsewhere[appId] = int(total)

    def countConnections(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """
        Every heartbeat, write C{counts()} (app id -> this node's open connections, for the apps
        whose connections are limited) and read the other live nodes' sum of each.
        """
        self._connectionCounts = counts

    def connectionsElsewhere(self, appId: str) -> int:
        """
        The open connections of C{appId} on the other live nodes at the last heartbeat (0 before
        the first, or while Redis is away: each node then limits its own).
        """
        return self._elsewhere.get(appId, 0)

    def _beaten(self, reply: list[Any], appId: str) -> None:
        self._checkAbsent(appId, reply[0])
        gone = _pairs(reply[1], 2)
        if gone:
            log.info(
                "reaped a dead node of app {appId}: {n} members gone", appId=appId, n=len(gone)
            )
        for channel, userId in gone:
            self._announcer().announceMemberGone(appId, channel, userId)
        for channel in reply[2]:
            self._announcer().announceVacated(appId, channel)

    # -- questions -----------------------------------------------------------------------------

    def members(self, appId: str, channel: str) -> Deferred[dict[str, Any]]:
        d = self.broker.script("members", [], self._args(appId, channel))
        return d.addCallback(lambda flat: {u: json.loads(i) for u, i in _pairs(flat, 2)})

    def channelInfo(self, appId: str, channel: str) -> Deferred[ChannelInfo]:
        d = self.broker.script("channel", [], self._args(appId, channel))
        return d.addCallback(lambda r: channelInfo(channel, int(r[0]), int(r[1])))

    def occupied(self, appId: str, prefix: str | None) -> Deferred[dict[str, ChannelInfo]]:
        d = self.broker.script("channels", [], self._args(appId, prefix or ""))
        return d.addCallback(
            lambda flat: {
                c: channelInfo(c, int(n), int(u)) for c, n, u in _pairs(flat, 3) if int(n) > 0
            }
        )
