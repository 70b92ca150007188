"""
Subscription and presence bookkeeping of this process, with no Twisted: which connections are on
which channel, who is present on presence channels, and the connections by socket id. This is the
one record of the open Pusher connections of this process; the hub makes answers cluster-wide.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from pushsvc.frames import Member

if TYPE_CHECKING:
    from pushsvc.fanout.writer import Outbound

ChannelKey = tuple[str, str]  # (app id, channel)


class Subscriber(Protocol):
    """What the registry needs of a connection (the WebSocket protocol provides it)."""

    socketId: str
    appId: str
    outbound: Outbound | None  # None until the connection is open

    def closeWith(self, code: int, reason: str) -> None:
        """Send a close frame with C{code} and drop the connection."""


class Subscriptions:
    """Local connections, their subscriptions and presence members, per app."""

    def __init__(self) -> None:
        # (app, channel) -> {connection: its outbound}; a dict keeps subscription order.
        self._subs: dict[ChannelKey, dict[Subscriber, Outbound]] = {}
        # (app, presence channel) -> {user id: [user info, local connection count]}
        self._members: dict[ChannelKey, dict[str, list[Any]]] = {}
        # connection -> {channel: presence user id or None}
        self._conns: dict[Subscriber, dict[str, str | None]] = {}
        self._bySocket: dict[str, Subscriber] = {}
        # Every WebSocket TCP connection until it is gone: open (also in _conns), refused, or
        # closing. What a drain waits for.
        self.live: set[Any] = set()
        self.connectionsTotal = 0
        self.subscriptions = 0
        # app id -> its open connections here: counted, so that the figures sampled every
        # second need not walk 100,000 connections.
        self.connectionsByApp: dict[str, int] = {}
        # app id -> [occupied channels, subscriptions] here, counted for the same reason.
        self.channelsByApp: dict[str, list[int]] = {}

    def addConnection(self, conn: Subscriber) -> None:
        new = conn not in self._conns
        self._conns[conn] = {}
        self._bySocket[conn.socketId] = conn
        self.connectionsTotal += 1
        if new:
            byApp = self.connectionsByApp
            byApp[conn.appId] = byApp.get(conn.appId, 0) + 1

    def removeConnection(self, conn: Subscriber) -> None:
        """Forget C{conn}; the hub unsubscribes it from its channels first."""
        if self._conns.pop(conn, None) is not None:
            byApp = self.connectionsByApp
            left = byApp.get(conn.appId, 0) - 1
            if left > 0:
                byApp[conn.appId] = left
            else:
                byApp.pop(conn.appId, None)
        if self._bySocket.get(conn.socketId) is conn:
            del self._bySocket[conn.socketId]

    def openConnections(self) -> Collection[Subscriber]:
        """The open connections (a view: copy it to change them while walking through)."""
        return self._conns.keys()

    def connection(self, socketId: str) -> Subscriber | None:
        return self._bySocket.get(socketId)

    @property
    def connectionCount(self) -> int:
        return len(self._conns)

    def subscribe(
        self, conn: Subscriber, channel: str, member: Member | None = None
    ) -> tuple[bool, bool]:
        """
        Add C{conn} to C{channel} (as C{member} on presence channels).

        @return: (whether this is the channel's first local subscriber, whether this is the
            member's first local connection on it). Nothing changes if already subscribed.
        """
        channels = self._conns.get(conn)
        outbound = conn.outbound
        if channels is None or channel in channels or outbound is None:
            return False, False
        key = (conn.appId, channel)
        subs = self._subs.get(key)
        first = subs is None
        counts = self.channelsByApp.get(conn.appId)
        if counts is None:
            counts = self.channelsByApp[conn.appId] = [0, 0]
        if subs is None:
            subs = self._subs[key] = {}
            counts[0] += 1
        subs[conn] = outbound
        outbound.owner = self  # type: ignore[assignment]  # the Registry: a FanOut too
        self.subscriptions += 1
        counts[1] += 1
        userFirst = False
        if member is not None:
            members = self._members.setdefault(key, {})
            entry = members.get(member.userId)
            if entry is None:
                members[member.userId] = [member.userInfo, 1]
                userFirst = True
            else:
                entry[1] += 1
            channels[channel] = member.userId
        else:
            channels[channel] = None
        return first, userFirst

    def unsubscribe(self, conn: Subscriber, channel: str) -> tuple[bool, str | None]:
        """
        Remove C{conn} from C{channel}.

        @return: (whether the channel has no local subscriber left, the user id whose last local
            connection on this presence channel this was, else None).
        """
        channels = self._conns.get(conn)
        if channels is None or channel not in channels:
            return False, None
        userId = channels.pop(channel)
        key = (conn.appId, channel)
        subs = self._subs.get(key)
        last = False
        if subs is not None and subs.pop(conn, None) is not None:
            self.subscriptions -= 1
            counts = self.channelsByApp[conn.appId]
            counts[1] -= 1
            if not subs:
                del self._subs[key]
                last = True
                counts[0] -= 1
            if not counts[1]:
                del self.channelsByApp[conn.appId]
        userLeft = None
        if userId is not None:
            members = self._members.get(key, {})
            entry = members.get(userId)
            if entry is not None:
                entry[1] -= 1
                if entry[1] <= 0:
                    del members[userId]
                    userLeft = userId
            if not members:
                self._members.pop(key, None)
        return last, userLeft

    def channelsOf(self, conn: Subscriber) -> list[str]:
        return list(self._conns.get(conn, ()))

    def isSubscribed(self, conn: Subscriber, channel: str) -> bool:
        return channel in self._conns.get(conn, ())

    def presenceUserId(self, conn: Subscriber, channel: str) -> str | None:
        """The user id C{conn} joined presence C{channel} as."""
        return self._conns.get(conn, {}).get(channel)

    def subscriptionCount(self, appId: str, channel: str) -> int:
        return len(self._subs.get((appId, channel), ()))

    def members(self, appId: str, channel: str) -> dict[str, Any]:
        """User id -> user info of the members present on C{channel} here."""
        return {u: e[0] for u, e in self._members.get((appId, channel), {}).items()}

    def channels(self, appId: str) -> Iterator[tuple[str, int]]:
        """(channel, local subscription count) of every occupied channel of C{appId}."""
        for (app, channel), subs in list(self._subs.items()):
            if app == appId:
                yield channel, len(subs)

    def subscribers(self, appId: str, channel: str) -> list[Subscriber]:
        return list(self._subs.get((appId, channel), ()))
