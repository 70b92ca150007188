"""
The seams between the push parts: the hub that HTTP resources publish through, the broker that
carries publishes between processes, and the settings of the WebSocket side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zope.interface import Attribute, Interface


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


class IBroker(Interface):
    """
    Carries publishes from the hub of one process to the hubs of every process (itself included).

    The in-process broker hands a publish straight back to its own hub; the Redis broker fans it
    out through Redis pub/sub.
    """

    healthy = Attribute("True while publishes can be carried.")

    def start() -> Any:
        """Connect. Fires with None."""

    def stop() -> Any:
        """Disconnect. Fires with None."""

    def setReceiver(receive: Any) -> None:
        """
        Hand every message that reaches this process to C{receive(message: bytes)} (the hub's
        C{receive}); the hub calls this once when it is built.
        """

    def publish(appId: str, channel: str, message: bytes) -> Any:
        """
        Carry C{message} (an opaque encoded envelope) to every process subscribed to C{channel}.
        Fires with None once accepted; fails with L{BrokerUnavailable}.
        """

    def subscribe(appId: str, channel: str) -> Any:
        """This process has its first local subscriber on C{channel}. Fires with None."""

    def unsubscribe(appId: str, channel: str) -> Any:
        """This process has no local subscriber left on C{channel}. Fires with None."""


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

    def presenceUserIds(app: Any, channel: str) -> Any:
        """Fires with the list of user ids present on a presence channel."""

    def terminateUserConnections(app: Any, userId: str) -> Any:
        """Close every connection signed in as C{userId}, on every process. Fires with None."""

    def health() -> Any:
        """A dict of dependency name -> 'ok' or a sentence saying what is wrong (synchronous)."""
