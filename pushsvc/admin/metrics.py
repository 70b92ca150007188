"""
C{/metrics} on the admin listener, written by C{prometheus_client}: process metrics (CPU, RSS,
open fds), the service's counters and gauges (per app where they are per app), and, while
recording, histograms of request duration by endpoint, of fan-out duration and of the time
from a publish reaching the broker to its fan-out.

Each service has its own C{CollectorRegistry} (not the module-global one), so several services
in one process (tests) do not collide.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from twisted.web.resource import Resource
from twisted.web.server import Request

from pushsvc.recording import Recorder
from pushsvc.stall import ReactorMeter

# Names that changed when /metrics moved to prometheus_client (README, "Metrics").
RENAMED = {
    # It counts events this process fanned out locally, not publishes accepted.
    "pushsvc_publishes_total": "pushsvc_fanouts_total",
    # A counter may not share its base name with the pushsvc_connections gauge.
    "pushsvc_connections_total": "pushsvc_connections_opened_total",
    # The same for the per-app pair (pushsvc_app_connections is the gauge).
    "pushsvc_app_connections_total": "pushsvc_app_connections_opened_total",
}
# Gauges now given per app, with an app_id label (the sum is the old figure).
PER_APP = ("pushsvc_connections", "pushsvc_subscriptions", "pushsvc_channels")

DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Reactor stalls (iterations busy >= 1 ms) and GC pauses; the benchmark reads these names.
STALL_BUCKETS = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5,
    1, 2, 5,
)  # fmt: skip

Figures = Callable[[], list[tuple[str, str, str, float]]]
PerApp = Callable[[], dict[str, dict[str, int]]]
# (name, help, type, labels, value): series labelled per app (AppStats.samples)
Labelled = Callable[[], list[tuple[str, str, str, dict[str, str], float]]]


class ProcessFigures(ProcessCollector):
    """
    prometheus_client's process metrics, with C{process_open_fds} counted off the reactor
    thread: listing C{/proc/self/fd} costs ~1 us a descriptor (~20 ms at 19,000 connections,
    ~0.1 s at 100,000), a reactor stall at every scrape. A scrape gives the count the one
    before it started (in a thread); the first one counts there and then.
    """

    def __init__(
        self, registry: CollectorRegistry, callInThread: Callable[..., Any] | None = None
    ) -> None:
        self.callInThread = callInThread
        self.openFds: int | None = None
        self._counting = False
        super().__init__(registry=registry)

    def _countFds(self) -> None:
        try:
            self.openFds = len(os.listdir("/proc/self/fd"))
        except OSError:
            self.openFds = None
        finally:
            self._counting = False

    def collect(self) -> Iterable[Metric]:
        if not self._btime:
            return []
        result: list[Metric] = []
        try:
            with open("/proc/self/stat", "rb") as stat:
                parts = stat.read().split(b")")[-1].split()
            ticks = self._ticks
            result += [
                GaugeMetricFamily(
                    "process_virtual_memory_bytes",
                    "Virtual memory size in bytes.",
                    value=float(parts[20]),
                ),
                GaugeMetricFamily(
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes.",
                    value=float(parts[21]) * self._pagesize,
                ),
                GaugeMetricFamily(
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                    value=float(parts[19]) / ticks + self._btime,
                ),
                CounterMetricFamily(
                    "process_cpu_seconds_total",
                    "Total user and system CPU time spent in seconds.",
                    value=(float(parts[11]) + float(parts[12])) / ticks,
                ),
            ]
        except OSError:
            pass
        if self.openFds is None or self.callInThread is None:
            self._countFds()
        elif not self._counting:
            self._counting = True
            self.callInThread(self._countFds)
        if self.openFds is not None:
            result.append(
                GaugeMetricFamily(
                    "process_open_fds", "Number of open file descriptors.", value=self.openFds
                )
            )
        result.append(
            GaugeMetricFamily(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                value=float(resource.getrlimit(resource.RLIMIT_NOFILE)[0]),
            )
        )
        return result


class ServiceCollector(Collector):
    """The hand-kept figures of the service, as metric families."""

    def __init__(
        self,
        figures: Figures,
        perApp: PerApp,
        recorder: Recorder | None,
        labelled: Labelled | None = None,
    ) -> None:
        self.figures = figures
        self.perApp = perApp
        self.recorder = recorder
        self.labelled = labelled

    def collect(self) -> Iterator[Metric]:
        yield from self._labelled()
        yield from self._figures()

    def _labelled(self) -> Iterator[Metric]:
        if self.labelled is None:
            return
        families: dict[str, Metric] = {}
        for name, help, kind, labels, value in self.labelled():
            name = RENAMED.get(name, name)
            family = families.get(name)
            if family is None:
                cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                family = families[name] = cls(name, help, labels=sorted(labels))
            family.add_metric([labels[k] for k in sorted(labels)], value)  # type: ignore[attr-defined]
        yield from families.values()

    def _figures(self) -> Iterator[Metric]:
        byApp = self.perApp()
        for name, help, kind, value in self.figures():
            if name in PER_APP:
                family = GaugeMetricFamily(name, help, labels=["app_id"])
                for appId, values in sorted(byApp.items()):
                    family.add_metric([appId], values.get(name, 0))
                yield family
                continue
            name = RENAMED.get(name, name)
            if kind == "counter":
                yield CounterMetricFamily(name, help, value=value)
            else:
                yield GaugeMetricFamily(name, help, value=value)
        recorder = self.recorder
        if recorder is None:
            return
        requests = CounterMetricFamily(
            "pushsvc_http_requests_total",
            "Recorded HTTP requests of a known app, by endpoint",
            labels=["endpoint", "app_id"],
        )
        for (endpoint, appId), count in sorted(recorder.requestsByApp.items()):
            requests.add_metric([endpoint, appId], count)
        yield requests
        deliveries = CounterMetricFamily(
            "pushsvc_app_deliveries_total",
            "Frames queued for subscribers, per app (recorded fan-outs)",
            labels=["app_id"],
        )
        fanouts = CounterMetricFamily(
            "pushsvc_app_fanouts_total", "Local fan-outs, per app (recorded)", labels=["app_id"]
        )
        for appId, (n, subscribers) in sorted(recorder.fanOutsByApp.items()):
            fanouts.add_metric([appId], n)
            deliveries.add_metric([appId], subscribers)
        yield fanouts
        yield deliveries
        yield GaugeMetricFamily(
            "pushsvc_recorder_requests", "Requests kept in the recorder's ring", len(recorder.ring)
        )
        yield CounterMetricFamily(
            "pushsvc_recorder_recorded_total", "Requests recorded", value=recorder.recorded
        )


class Metrics:
    """The registry of one service, and the histograms the recorder feeds."""

    def __init__(
        self,
        figures: Figures,
        perApp: PerApp,
        recorder: Recorder | None,
        labelled: Labelled | None = None,
        callInThread: Callable[..., Any] | None = None,
    ) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.process = ProcessFigures(registry, callInThread)
        registry.register(ServiceCollector(figures, perApp, recorder, labelled))
        self.requestDuration = Histogram(
            "pushsvc_http_request_duration_seconds",
            "HTTP request duration (recorded), by endpoint",
            ["endpoint"],
            registry=registry,
            buckets=DURATION_BUCKETS,
        )
        self.fanOutDuration = Histogram(
            "pushsvc_fanout_duration_seconds",
            "Time to write (or queue) one local fan-out",
            registry=registry,
            buckets=DURATION_BUCKETS,
        )
        self.publishToFanOut = Histogram(
            "pushsvc_publish_to_fanout_seconds",
            "From a publish handed to the broker to its local fan-out (in-process broker)",
            registry=registry,
            buckets=DURATION_BUCKETS,
        )
        self.reactorStall = Histogram(
            "pushsvc_reactor_stall_seconds",
            "Time the reactor was busy between two polls for I/O (iterations busy >= 1 ms)",
            registry=registry,
            buckets=STALL_BUCKETS,
        )
        self.reactorStallLongest = Gauge(
            "pushsvc_reactor_stall_longest_seconds",
            "The longest time the reactor was busy between two polls, since start",
            registry=registry,
        )
        self.gcPause = Histogram(
            "pushsvc_gc_pause_seconds",
            "Garbage collector pauses, by generation",
            ["generation"],
            registry=registry,
            buckets=STALL_BUCKETS,
        )
        self.gcPauseLongest = Gauge(
            "pushsvc_gc_pause_longest_seconds",
            "The longest garbage collector pause since start",
            registry=registry,
        )
        self._byGeneration = [self.gcPause.labels(str(g)) for g in range(3)]
        self._byEndpoint: dict[str, Any] = {}
        if recorder is not None:
            recorder.observeRequest = self._request
            recorder.observeFanOut = self._fanOut

    def watch(self, meter: ReactorMeter) -> None:
        """Feed the stall and GC metrics from C{meter}."""
        meter.observeStall = self.reactorStall.observe
        meter.observeGC = self._gc
        self.reactorStallLongest.set_function(lambda: meter.longestStall)
        self.gcPauseLongest.set_function(lambda: meter.longestGC)

    def _gc(self, generation: int, seconds: float) -> None:
        if 0 <= generation < len(self._byGeneration):
            self._byGeneration[generation].observe(seconds)
        else:
            self.gcPause.labels(str(generation)).observe(seconds)

    def _request(self, endpoint: str, seconds: float) -> None:
        child = self._byEndpoint.get(endpoint)
        if child is None:  # endpoints are a bounded set (recording.classifier)
            child = self._byEndpoint[endpoint] = self.requestDuration.labels(endpoint)
        child.observe(seconds)

    def _fanOut(self, seconds: float, sinceBroker: float | None) -> None:
        self.fanOutDuration.observe(seconds)
        if sinceBroker is not None:
            self.publishToFanOut.observe(sinceBroker)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))


class MetricsResource(Resource):
    """C{GET /metrics}: the Prometheus text format."""

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return self.metrics.render()


def perAppFigures(registry: Any, appIds: Iterable[str] = ()) -> dict[str, dict[str, int]]:
    """
    Connections, subscriptions and occupied channels per app (each of C{appIds} named, with 0s
    when it has none), from the fan-out registry's counts (no walk over its connections or
    channels).
    """
    out: dict[str, dict[str, int]] = {appId: {name: 0 for name in PER_APP} for appId in appIds}
    for appId, n in registry.connectionsByApp.items():
        out.setdefault(appId, {})["pushsvc_connections"] = n
    for appId, (channels, subscriptions) in registry.channelsByApp.items():
        entry = out.setdefault(appId, {})
        entry["pushsvc_channels"] = channels
        entry["pushsvc_subscriptions"] = subscriptions
    return out
