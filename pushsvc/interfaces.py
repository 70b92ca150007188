"""
The seams between the push parts: the hub that HTTP resources publish through, the broker that
carries publishes between processes, and the settings of the WebSocket side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.application.service import IService
from zope.interface import Attribute, Interface

CACHE_TTL = 30 * 60.0  # seconds: Pusher keeps the last event of a cache channel for 30 minutes


class BrokerUnavailable(Exception):
    """The broker cannot carry a publish now (e.g. Redis is down); answer 503, never 2xx."""


@dataclass(frozen=True)
class ChannelInfo:
    """What the HTTP API tells about one channel (across every process)."""

    occupied: bool
    subscriptionCount: int
    userCount: int | None = None  # presence channels only


@dataclass(frozen=True)
class PushSettings:
    """Limits and timers of the WebSocket side; C{tap.Options} fills them in."""

    activityTimeout: int = 120  # seconds, told to clients in connection_established
    pingInterval: float = 30.0  # server WebSocket ping on connections idle this long
    pongTimeout: float = 30.0  # close with 4201 when nothing comes back in this time
    maxFrameBytes: int = 64 * 1024
    maxSubscriptions: int = 100  # per connection
    maxOutboundBytes: int = 1024 * 1024  # unsent bytes before a connection is closed with 4100
    clientEventsPerSecond: int = 10
    allowedOrigins: tuple[str, ...] = field(default=())  # empty: any origin
    logWebSockets: bool = True  # one info line per WebSocket opened (or refused) and closed


class IBroker(Interface):
    """
    Carries publishes from the hub of one process to the hubs of every process (itself included).

    The in-process broker hands a publish straight back to its own hub; the Redis broker fans it
    out through Redis pub/sub.
    """

    healthy = Attribute("True while publishes can be carried.")
    status = Attribute("'ok', or a sentence saying why publishes cannot be carried now.")
    linked = Attribute(
        "True while every publish accepted by any process reaches this one (the subscriber "
        "link is up); may be true while publishes from this process cannot be carried."
    )

    def start() -> Any:
        """Connect. Fires with None."""

    def stop() -> Any:
        """Disconnect. Fires with None."""

    def setReceiver(receive: Any) -> None:
        """
        Hand every message that reaches this process to C{receive(message: bytes)} (the hub's
        C{receive}); the hub calls this once when it is built.
        """

    def setHealthListener(listener: Any) -> None:
        """
        Call C{listener(linked: bool)} when this process may have missed publishes: with False
        when the broker lost its link (publishes accepted elsewhere meanwhile do not reach this
        process) and with True once the link is back. The in-process broker never calls it.
        """

    def publish(appId: str, channel: str, message: bytes, cache: bytes | None = None) -> Any:
        """
        Carry C{message} (an opaque encoded envelope) to every process subscribed to C{channel}.
        Fires with None once accepted; fails with L{BrokerUnavailable}.

        C{cache}, for cache channels: the event frame to keep as the channel's last event for
        L{CACHE_TTL} where every process can read it (L{cached}); the in-process broker ignores
        it (the hub remembers what it receives).
        """

    def cached(appId: str, channel: str) -> Any:
        """
        Fires with C{(frame, seconds left)} of the last event kept for cache channel C{channel}
        by L{publish}, or None (always None in-process); fails with L{BrokerUnavailable}.
        """

    def subscribe(appId: str, channel: str) -> Any:
        """This process has its first local subscriber on C{channel}. Fires with None."""

    def unsubscribe(appId: str, channel: str) -> Any:
        """This process has no local subscriber left on C{channel}. Fires with None."""

    def claim(appId: str, key: str, ttl: float) -> Any:
        """
        Claim C{key} for C{ttl} seconds, across every process the broker reaches (so a signed
        request is accepted once). Fires with True the first time C{key} is claimed within
        C{ttl}, False while an earlier claim holds; fails with L{BrokerUnavailable}.
        """


class MemberEvents(Protocol):
    """
    What the cluster state may call back (the hub provides it): members of presence channels
    that appeared or vanished in the whole cluster, found by a reconnect or a reaped node.
    """

    def announceMember(self, appId: str, channel: str, userId: str, userInfo: Any) -> None: ...

    def announceMemberGone(self, appId: str, channel: str, userId: str) -> None: ...

    def announceOccupied(self, appId: str, channel: str) -> None:
        """C{channel}'s cluster-wide subscription count went from 0 to 1 or more."""

    def announceVacated(self, appId: str, channel: str) -> None:
        """C{channel}'s cluster-wide subscription count went to 0."""

    def announceCount(self, appId: str, channel: str, count: int) -> None:
        """C{channel}'s cluster-wide subscription count changed to C{count}."""


class IClusterState(Interface):
    """
    Who is subscribed where, counted over every process: the in-process state answers from the
    local registry, the Redis state (L{pushsvc.redis.state.RedisState}) for the whole cluster. The
    hub tells it of every change and asks it every question of the HTTP API.
    """

    def attach(nodeId: str, events: MemberEvents) -> None:
        """
        This process's node id, and where to report members that came or went elsewhere (the
        hub); called once, by the hub.
        """

    def services() -> list[IService]:
        """The periodic work (a heartbeat) for the owner to run as children of its service."""

    def start() -> None:
        """Begin keeping this process's share of the state alive (without a service tree)."""

    def stop() -> Any:
        """Withdraw this process's share of the state. Fires with None."""

    def counted(appId: str, channel: str) -> Any:
        """
        The local subscription count of C{channel} changed. Fires with None once the cluster
        state has it (errors are logged, not raised). When that makes the cluster-wide count
        go from 0 or to 0, the state calls C{announceOccupied} / C{announceVacated} of the
        L{MemberEvents} once for the whole cluster.
        """

    def joined(appId: str, channel: str, userId: str, userInfo: Any) -> Any:
        """
        User C{userId} has its first local connection on presence C{channel}. Fires with True
        when it is the user's first connection in the whole cluster (announce member_added).
        """

    def left(appId: str, channel: str, userId: str) -> Any:
        """
        User C{userId} has no local connection left on presence C{channel}. Fires with True
        when it has none left in the whole cluster (announce member_removed).
        """

    def countConnections(counts: Any) -> None:
        """
        C{counts()}: app id -> this process's open connections, for the apps with a
        C{max_connections}; the Redis state shares them every heartbeat (L{connectionsElsewhere}).
        """

    def connectionsElsewhere(appId: str) -> int:
        """
        Open connections of C{appId} on the other processes, as of the last heartbeat (0
        in-process): a connection quota check adds it to this process's count, O(1).
        """

    def members(appId: str, channel: str) -> Any:
        """Fires with user id -> user info of presence C{channel}; fails L{BrokerUnavailable}."""

    def channelInfo(appId: str, channel: str) -> Any:
        """Fires with the L{ChannelInfo} of C{channel}; fails with L{BrokerUnavailable}."""

    def occupied(appId: str, prefix: str | None) -> Any:
        """
        Fires with channel -> L{ChannelInfo} of the occupied channels (not C{#server-to-user-}
        ones) whose name starts with C{prefix}; fails with L{BrokerUnavailable}.
        """


class IHub(Interface):
    """What the HTTP resources (Pusher API, webhook, chat) publish and ask through."""

    def publish(
        app: Any, channels: Any, event: str, data: str, exceptSocketId: str | None = None
    ) -> Any:
        """
        Publish C{event} with C{data} (a string) on each of C{channels} of C{app}, skipping the
        connection C{exceptSocketId}. Fires with None once the broker accepted it; fails with
        L{BrokerUnavailable}.
        """

    def channelInfo(app: Any, channel: str) -> Any:
        """Fires with a L{ChannelInfo}."""

    def occupiedChannels(app: Any, prefix: str | None) -> Any:
        """Fires with a dict channel name -> L{ChannelInfo} of the occupied channels."""

    def cacheInfo(app: Any, channel: str) -> Any:
        """
        Fires with C{{"event", "data", "ttl"}} of the event kept for cache channel C{channel}
        (C{ttl}: whole seconds it is kept for still), or None when none is kept.
        """

    def presenceUserIds(app: Any, channel: str) -> Any:
        """Fires with the list of user ids present on a presence channel."""

    def terminateUserConnections(app: Any, userId: str) -> Any:
        """Close every connection signed in as C{userId}, on every process. Fires with None."""

    def claim(app: Any, key: str, ttl: float) -> Any:
        """
        Fires with True the first time C{key} is claimed for C{app} within C{ttl} seconds, on
        any process, False after that (L{IBroker.claim}); fails with L{BrokerUnavailable}.
        """

    def health() -> Any:
        """A dict of dependency name -> 'ok' or a sentence saying what is wrong (synchronous)."""
