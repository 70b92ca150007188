"""
The one-process implementations: L{LocalBroker} (a publish goes straight back to this process's
hub) and L{LocalState} (counts and members answered from this process's registry). Their Redis
counterparts, for several processes, are in L{pushsvc.redis}.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import IService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from pushsvc.fanout.registry import Registry
from pushsvc.frames import channelKind
from pushsvc.interfaces import (
    BrokerUnavailable,
    ChannelInfo,
    IBroker,
    IClusterState,
    MemberEvents,
)


def channelInfo(channel: str, count: int, users: int | None) -> ChannelInfo:
    """What the HTTP API reports of C{channel}: a user count for presence channels only."""
    if channelKind(channel) != "presence":
        users = None
    return ChannelInfo(occupied=count > 0, subscriptionCount=count, userCount=users)


@implementer(IBroker)
class LocalBroker:
    """
    The in-process broker: a publish goes straight back to this process's hub.

    @param clock: times the claims (L{claim}); the monotonic clock when not given.
    """

    healthy = True
    linked = True
    status = "ok"
    maxClaims = 100_000  # a claim beyond this many live ones fails: refused, never forgotten

    def __init__(self, clock: IReactorTime | None = None) -> None:
        self._receive: Callable[[bytes], None] | None = None
        self._seconds = clock.seconds if clock is not None else time.monotonic
        # (app, key) -> expiry, in the order claimed (OrderedDict: O(1) at the front however
        # many were removed there, which a dict is not).
        self._claims: OrderedDict[tuple[str, str], float] = OrderedDict()

    def setReceiver(self, receive: Callable[[bytes], None]) -> None:
        self._receive = receive

    def setHealthListener(self, listener: Callable[[bool], None]) -> None:
        """Never called: this broker cannot lose a link."""

    def start(self) -> Deferred[None]:
        return succeed(None)

    def stop(self) -> Deferred[None]:
        return succeed(None)

    def publish(
        self, appId: str, channel: str, message: bytes, cache: bytes | None = None
    ) -> Deferred[None]:
        """Hands C{message} to the hub at once (which remembers cache events); fires with None."""
        if self._receive is None:
            raise BrokerUnavailable("no hub is attached to the broker")
        self._receive(message)
        return succeed(None)

    def cached(self, appId: str, channel: str) -> Deferred[tuple[bytes, float] | None]:
        """None: this process's hub is the only one, and it remembers what it received."""
        return succeed(None)

    def subscribe(self, appId: str, channel: str) -> Deferred[None]:
        return succeed(None)

    def unsubscribe(self, appId: str, channel: str) -> Deferred[None]:
        return succeed(None)

    def claim(self, appId: str, key: str, ttl: float) -> Deferred[bool]:
        """
        Fires with True the first time C{key} is claimed within C{ttl} seconds, else False;
        fails with L{BrokerUnavailable} while L{maxClaims} live claims are held.
        """
        now = self._seconds()
        claims = self._claims
        # Claims are kept in the order they were made; with one ttl that is expiry order, so the
        # expired ones are at the front (each is removed once: O(1) a call, amortised).
        while claims:
            oldest, expiry = next(iter(claims.items()))
            if expiry > now:
                break
            claims.popitem(last=False)
        held = claims.get((appId, key))
        if held is not None and held > now:
            return succeed(False)
        claims.pop((appId, key), None)
        if len(claims) >= self.maxClaims:
            return fail(BrokerUnavailable(f"over {self.maxClaims} claims made recently"))
        claims[(appId, key)] = now + ttl
        return succeed(True)


@implementer(IClusterState)
class LocalState:
    """The state of one process: every answer comes from its registry, at once."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.events: MemberEvents | None = None
        self._occupied: set[tuple[str, str]] = set()  # (app, channel) with subscribers

    def attach(self, nodeId: str, events: MemberEvents) -> None:
        # One process: the hub announces every member change itself; occupancy is told here.
        self.events = events

    def services(self) -> list[IService]:
        return []

    def start(self) -> None:
        pass

    def stop(self) -> Deferred[None]:
        return succeed(None)

    def counted(self, appId: str, channel: str) -> Deferred[None]:
        """Announce a channel that became occupied or vacated; fires with None at once."""
        key = (appId, channel)
        count = self.registry.subscriptionCount(appId, channel)
        if self.events is not None:
            self.events.announceCount(appId, channel, count)
        if count > 0:
            if key not in self._occupied:
                self._occupied.add(key)
                if self.events is not None:
                    self.events.announceOccupied(appId, channel)
        elif key in self._occupied:
            self._occupied.discard(key)
            if self.events is not None:
                self.events.announceVacated(appId, channel)
        return succeed(None)

    def countConnections(self, counts: Callable[[], Mapping[str, int]]) -> None:
        pass  # one process: its own counts are the whole count

    def connectionsElsewhere(self, appId: str) -> int:
        return 0

    def joined(self, appId: str, channel: str, userId: str, userInfo: Any) -> Deferred[bool]:
        return succeed(True)

    def left(self, appId: str, channel: str, userId: str) -> Deferred[bool]:
        return succeed(True)

    def members(self, appId: str, channel: str) -> Deferred[dict[str, Any]]:
        return succeed(self.registry.members(appId, channel))

    def channelInfo(self, appId: str, channel: str) -> Deferred[ChannelInfo]:
        count = self.registry.subscriptionCount(appId, channel)
        return succeed(channelInfo(channel, count, len(self.registry.members(appId, channel))))

    def occupied(self, appId: str, prefix: str | None) -> Deferred[dict[str, ChannelInfo]]:
        return succeed(
            {
                channel: channelInfo(channel, count, len(self.registry.members(appId, channel)))
                for channel, count in self.registry.channels(appId)
                if channel.startswith(prefix or "") and not channel.startswith("#")
            }
        )
