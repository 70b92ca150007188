"""
Test doubles for code built on pushsvc: fakes that keep everything in memory and answer at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from pushsvc.interfaces import BrokerUnavailable, ChannelInfo, IHub


@dataclass(frozen=True)
class Published:
    """One call of L{FakeHub.publish}."""

    app: Any
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
        self.terminated: list[tuple[Any, str]] = []
        self.claimed: set[tuple[str, str]] = set()
        self.failPublishes = False

    def publish(
        self,
        app: Any,
        channels: Any,
        event: str,
        data: str,
        exceptSocketId: str | None = None,
    ) -> Deferred[None]:
        """Fires with None once recorded; fails with L{BrokerUnavailable} when C{failPublishes}."""
        if self.failPublishes:
            return fail(BrokerUnavailable("the fake broker is down"))
        self.published.append(Published(app, list(channels), event, data, exceptSocketId))
        return succeed(None)

    def channelInfo(self, app: Any, channel: str) -> Deferred[ChannelInfo]:
        """Fires with the L{ChannelInfo} set in C{channels}, or an unoccupied one."""
        info = self.channels.get(channel)
        if info is None:
            userCount = 0 if channel.startswith("presence-") else None
            info = ChannelInfo(occupied=False, subscriptionCount=0, userCount=userCount)
        return succeed(info)

    def occupiedChannels(self, app: Any, prefix: str | None) -> Deferred[dict[str, ChannelInfo]]:
        """Fires with the occupied channels of C{channels} whose name starts with C{prefix}."""
        return succeed(
            {
                name: info
                for name, info in self.channels.items()
                if info.occupied and name.startswith(prefix or "")
            }
        )

    def cacheInfo(self, app: Any, channel: str) -> Deferred[dict[str, Any] | None]:
        """None: the fake keeps no cache events."""
        return succeed(None)

    def presenceUserIds(self, app: Any, channel: str) -> Deferred[list[str]]:
        """Fires with the user ids set in C{presence} for C{channel} (none when unset)."""
        return succeed(list(self.presence.get(channel, [])))

    def terminateUserConnections(self, app: Any, userId: str) -> Deferred[None]:
        """Records C{(app, userId)} in C{terminated}; fires with None."""
        self.terminated.append((app, userId))
        return succeed(None)

    def claim(self, app: Any, key: str, ttl: float) -> Deferred[bool]:
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
