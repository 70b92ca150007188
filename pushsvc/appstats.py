"""
Per-app counts: what each app's connections and API calls did, labelled C{app_id} in C{/metrics}.

Counted per connection, subscription, client event or API request (O(1) each), never per
delivery: the fan-out loop stays as it is. An app removed by a reload keeps its counters until
the process ends (Prometheus counters must not go backwards), at a few hundred bytes an app.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class AppCounters:
    """One app's counts in this process."""

    connections: int = 0  # open now
    connectionsTotal: int = 0
    subscriptions: int = 0  # subscriptions accepted (a counter, not a gauge)
    clientEvents: int = 0
    clientEventsRateLimited: int = 0  # pusher:error 4301
    apiRequests: int = 0
    apiRateLimited: int = 0  # answered 429
    published: int = 0  # events the broker took from the HTTP API
    refusedDisabled: int = 0  # 4003
    refusedOverQuota: int = 0  # 4004
    refusedUnauthenticated: int = 0  # 4009: not signed in within user_authentication_timeout
    refusedSubscriptions: int = 0  # subscription_error for a limit (count, members, name)


# attribute -> (Prometheus name, help, type)
_SERIES: dict[str, tuple[str, str, str]] = {
    "connections": ("pushsvc_app_connections", "Open WebSocket connections", "gauge"),
    "connectionsTotal": (
        "pushsvc_app_connections_total",
        "WebSocket connections opened",
        "counter",
    ),
    "subscriptions": ("pushsvc_app_subscriptions_total", "Subscriptions accepted", "counter"),
    "clientEvents": ("pushsvc_app_client_events_total", "Client events relayed", "counter"),
    "clientEventsRateLimited": (
        "pushsvc_app_client_events_rate_limited_total",
        "Client events refused with 4301",
        "counter",
    ),
    "apiRequests": ("pushsvc_app_api_requests_total", "HTTP API requests", "counter"),
    "apiRateLimited": (
        "pushsvc_app_api_rate_limited_total",
        "HTTP API requests refused with 429 (max_api_requests_per_second)",
        "counter",
    ),
    "published": (
        "pushsvc_app_events_published_total",
        "Events published through the HTTP API",
        "counter",
    ),
    "refusedDisabled": (
        "pushsvc_app_refused_disabled_total",
        "Connections closed with 4003 (app disabled)",
        "counter",
    ),
    "refusedOverQuota": (
        "pushsvc_app_refused_over_quota_total",
        "Connections closed with 4004 (over max_connections)",
        "counter",
    ),
    "refusedUnauthenticated": (
        "pushsvc_app_refused_unauthenticated_total",
        "Connections closed with 4009 (not signed in within user_authentication_timeout)",
        "counter",
    ),
    "refusedSubscriptions": (
        "pushsvc_app_refused_subscriptions_total",
        "Subscriptions refused by a limit of the app",
        "counter",
    ),
}
assert set(_SERIES) == {f.name for f in fields(AppCounters)}


class AppStats:
    """app id -> L{AppCounters}, shared by the WebSocket side and the HTTP API."""

    def __init__(self) -> None:
        self._byApp: dict[str, AppCounters] = {}

    def of(self, appId: str) -> AppCounters:
        """The counters of C{appId}, created at first use."""
        counters = self._byApp.get(appId)
        if counters is None:
            counters = self._byApp[appId] = AppCounters()
        return counters

    def samples(self) -> list[tuple[str, str, str, dict[str, str], float]]:
        """
        C{(name, help, type, labels, value)}, one per series and app, labels C{{"app_id": id}}:
        for an exporter that labels (prometheus_client).
        """
        return [
            (name, help, kind, {"app_id": appId}, getattr(counters, attribute))
            for attribute, (name, help, kind) in _SERIES.items()
            for appId, counters in sorted(self._byApp.items())
        ]

    def metrics(self) -> list[tuple[str, str, str, float]]:
        """
        C{(name, help, type, value)} for the text C{/metrics}, the label in the name:
        C{pushsvc_app_connections{app_id="1"}}.
        """
        out: list[tuple[str, str, str, float]] = []
        for name, help, kind, labels, value in self.samples():
            label = labels["app_id"].replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
            out.append((f'{name}{{app_id="{label}"}}', help, kind, value))
        return out
