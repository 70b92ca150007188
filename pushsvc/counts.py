"""
C{pusher_internal:subscription_count}: for apps with C{subscriptionCount} on, the subscribers of
a channel (not presence ones, whose member list says as much) receive

    {"event": "pusher_internal:subscription_count", "channel": C,
     "data": "{\\"subscription_count\\":N}"}

when its cluster-wide count changes, at most once per channel every C{interval} seconds (the
first change at once, the latest of those that follow when the interval is over), and a
C{subscription_count} webhook goes with it. pusher-js turns it into C{pusher:subscription_count}.

The cluster state tells the hub of each new count (L{pushsvc.hub.Hub.announceCount}); this runs
per subscription change, never per delivered message. With several processes, each throttles the
changes it wrote itself, so a channel changing on every node may be told once per node per
interval.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from pushsvc.apps import App
from pushsvc.webhooks.sender import WebhookSender

INTERVAL = 5.0  # seconds between two counts sent on one channel
EVENT = "pusher_internal:subscription_count"


def countData(count: int) -> str:
    return json.dumps({"subscription_count": count}, separators=(",", ":"))


@dataclass
class _Throttle:
    timer: IDelayedCall  # when the interval since the last count sent is over
    waiting: int | None = None  # the latest count not sent yet


class SubscriptionCounts:
    """
    Throttles and sends subscription counts (the hub's C{counts}).

    @param send: C{send(appId, channel, event, data)}, to every subscriber on every process
        (the hub's internal event path).
    """

    def __init__(
        self,
        appById: Callable[[str], App | None],
        send: Callable[[str, str, str, str], None],
        clock: IReactorTime,
        webhooks: WebhookSender | None = None,
        interval: float = INTERVAL,
    ) -> None:
        self.appById = appById
        self.sendEvent = send
        self.clock = clock
        self.webhooks = webhooks
        self.interval = interval
        self._throttled: dict[tuple[str, str], _Throttle] = {}

    def __call__(self, appId: str, channel: str, count: int) -> None:
        app = self.appById(appId)
        if app is None or not app.subscriptionCount:
            return
        throttle = self._throttled.get((appId, channel))
        if throttle is not None:
            throttle.waiting = count
            return
        self._send(appId, channel, count)

    def _due(self, key: tuple[str, str]) -> None:
        throttle = self._throttled.pop(key, None)
        if throttle is not None and throttle.waiting is not None:
            self._send(key[0], key[1], throttle.waiting)

    def _send(self, appId: str, channel: str, count: int) -> None:
        if count > 0:
            self.sendEvent(appId, channel, EVENT, countData(count))
            key = (appId, channel)
            self._throttled[key] = _Throttle(self.clock.callLater(self.interval, self._due, key))
        if self.webhooks is not None:
            self.webhooks.subscriptionCount(appId, channel, count)

    def stop(self) -> None:
        """Cancel every timer."""
        for throttle in self._throttled.values():
            if throttle.timer.active():
                throttle.timer.cancel()
        self._throttled.clear()
