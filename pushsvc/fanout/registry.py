"""
The registry of this process's Pusher connections: the bookkeeping of L{Subscriptions} plus the
fan-out queue of L{FanOut}, closing connections, and the counters for C{/metrics}.

Everything here is about this process only; the hub asks it and makes answers cluster-wide.
Subscriptions are added and removed through the hub only (L{pushsvc.hub.Hub.subscribe},
C{unsubscribe}, C{disconnect}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from pushsvc.fanout.subscriptions import ChannelKey, Subscriber, Subscriptions
from pushsvc.fanout.writer import (
    FLUSH_CHUNK,
    MAX_QUEUED_BYTES,
    QUIET_SECONDS,
    SYNC_LIMIT,
    FanOut,
    Outbound,
)
from pushsvc.interfaces import PushSettings
from pushsvc.waiters import Waiters

__all__ = [
    "FLUSH_CHUNK",
    "MAX_QUEUED_BYTES",
    "QUIET_SECONDS",
    "SYNC_LIMIT",
    "ChannelKey",
    "Outbound",
    "Registry",
    "Subscriber",
]

log = Logger()


class Registry(Subscriptions, FanOut):
    """
    Local connections and subscriptions, per app, and their fan-out. Counters are plain ints for
    C{/metrics}.
    """

    def __init__(self, settings: PushSettings, clock: IReactorTime) -> None:
        Subscriptions.__init__(self)
        FanOut.__init__(self, clock)
        self.settings = settings
        self._idle: Waiters[None] = Waiters()  # whenIdle: the last TCP connection is gone
        self._closing: Waiters[None] = Waiters()  # closeAll: the last connection is gone
        self.publishes = 0
        self.deliveries = 0
        self.deliveryFailures = 0
        self.slowConsumerCloses = 0
        self.clientEvents = 0
        self.rateLimited = 0
        self.protocolErrors = 0

    def track(self, conn: Any) -> None:
        """A WebSocket TCP connection was made (open or not, it counts until it is gone)."""
        self.live.add(conn)

    def untrack(self, conn: Any) -> None:
        """A WebSocket TCP connection is gone."""
        self.live.discard(conn)
        if not self.live:
            self._idle.fire()

    def whenIdle(self) -> Deferred[None]:
        """Fires with None once no WebSocket TCP connection is left (draining, tests)."""
        return self._idle.wait(done=not self.live)

    def removeConnection(self, conn: Subscriber) -> None:
        """Forget C{conn}; the hub unsubscribes it from its channels first."""
        Subscriptions.removeConnection(self, conn)
        if not self._conns:
            self._closing.fire()

    def closeAll(self, code: int, reason: str) -> Deferred[None]:
        """Close every connection with C{code}. Fires with None once all of them are gone."""
        d = self._closing.wait(done=not self._conns)
        for conn in list(self._conns):
            self._safeClose(conn, code, reason)
        return d

    def _safeClose(self, conn: Subscriber, code: int, reason: str) -> None:
        try:
            conn.closeWith(code, reason)
        except Exception:
            log.failure("closing {socketId}", socketId=conn.socketId)

    def closeChannel(self, appId: str, channel: str, code: int, reason: str) -> int:
        """Close every local connection on C{channel}; @return: how many."""
        conns = self.subscribers(appId, channel)
        for conn in conns:
            self._safeClose(conn, code, reason)
        return len(conns)

    # -- metrics -------------------------------------------------------------------------------

    def metrics(self) -> list[tuple[str, str, str, float]]:
        """C{(name, help, type, value)} for C{/metrics}."""
        return [
            ("pushsvc_connections", "Open WebSocket connections", "gauge", len(self._conns)),
            (
                "pushsvc_connections_total",
                "WebSocket connections opened",
                "counter",
                self.connectionsTotal,
            ),
            ("pushsvc_subscriptions", "Current channel subscriptions", "gauge", self.subscriptions),
            ("pushsvc_channels", "Occupied channels", "gauge", len(self._subs)),
            (
                "pushsvc_publishes_total",
                "Events received for local fan-out",
                "counter",
                self.publishes,
            ),
            (
                "pushsvc_deliveries_total",
                "Frames queued for subscribers",
                "counter",
                self.deliveries,
            ),
            (
                "pushsvc_delivery_failures_total",
                "Writes to a subscriber that failed (each may carry several frames)",
                "counter",
                self.deliveryFailures,
            ),
            (
                "pushsvc_slow_consumer_closes_total",
                "Connections closed with 4100 (too slow)",
                "counter",
                self.slowConsumerCloses,
            ),
            ("pushsvc_client_events_total", "Client events relayed", "counter", self.clientEvents),
            (
                "pushsvc_client_events_rate_limited_total",
                "Client events refused with 4301",
                "counter",
                self.rateLimited,
            ),
            (
                "pushsvc_protocol_errors_total",
                "Client frames answered with pusher:error",
                "counter",
                self.protocolErrors,
            ),
        ]
