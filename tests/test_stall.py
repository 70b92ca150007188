"""
The reactor stall and GC pause meter (L{pushsvc.stall}) and its metrics: on a fake poller and
a fake monotonic clock, then once on the real reactor.
"""

from __future__ import annotations

import gc
import time
import weakref
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pushsvc import stall
from pushsvc.admin.metrics import Metrics
from pushsvc.stall import FULL_AFTER, MIDDLE_AFTER, ReactorMeter


class FakePoller:
    """A poller whose poll returns what the test says; other calls are counted."""

    def __init__(self) -> None:
        self.events: list[tuple[int, int]] = []
        self.registered: list[int] = []

    def poll(self, timeout: float = -1, maxevents: int = -1) -> list[tuple[int, int]]:
        return self.events

    def register(self, fd: int, flags: int) -> None:
        self.registered.append(fd)


class FakeReactor:
    def __init__(self) -> None:
        self._poller: Any = FakePoller()


class MeterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.now = 100.0
        self.patch(stall, "monotonic", lambda: self.now)
        self.reactor = FakeReactor()
        self.poller = self.reactor._poller
        self.stalls: list[float] = []
        self.gcs: list[tuple[int, float]] = []
        self.meter = ReactorMeter(
            Clock(), self.stalls.append, lambda g, s: self.gcs.append((g, s)), lambda: "3 open"
        )
        self.meter.install(self.reactor)
        self.addCleanup(self.meter.uninstall)

    def iteration(self, busy: float, events: int = 0) -> None:
        """The reactor works C{busy} seconds after a poll, then polls again."""
        self.poller.events = [(i, 1) for i in range(events)]
        self.reactor._poller.poll(1.0, 10)
        self.now += busy

    def test_onlyBusyIterationsAreObserved(self) -> None:
        """Iterations busy under 1 ms are not observed; longer ones are, and the longest kept."""
        self.iteration(0.0005)
        self.iteration(0.004)
        self.iteration(0.002)
        self.iteration(0)
        self.assertEqual([round(s, 6) for s in self.stalls], [0.004, 0.002])
        self.assertAlmostEqual(self.meter.longestStall, 0.004)

    def test_startUpIsNotAStall(self) -> None:
        """The time from install to the first poll (the rest of start-up) is not observed."""
        self.now += 2.0
        self.iteration(0.003)
        self.iteration(0)
        self.assertEqual([round(s, 6) for s in self.stalls], [0.003])

    def test_pollWaitIsNotBusy(self) -> None:
        """Time spent inside poll (waiting for I/O) is not counted."""
        self.iteration(0)

        def slowPoll(*args: Any) -> list[Any]:
            self.now += 5.0  # waited five seconds for something to happen
            return []

        self.poller.poll = slowPoll
        self.reactor._poller._poll = slowPoll
        self.reactor._poller.poll()
        self.reactor._poller.poll()
        self.assertEqual(self.stalls, [])

    def test_longStallIsLoggedWithWhatIsKnown(self) -> None:
        with capturedLogs() as events:
            self.iteration(0.3, events=7)
            self.iteration(0)
        warnings = [e for e in events if e.get("busy") is not None]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["log_level"].name, "warn")
        self.assertEqual((round(warnings[0]["busy"]), warnings[0]["events"]), (300, 7))
        self.assertEqual(warnings[0]["state"], "3 open")

    def test_pollerPassesThroughAndIsRestored(self) -> None:
        self.reactor._poller.register(5, 1)
        self.assertEqual(self.poller.registered, [5])
        self.meter.uninstall()
        self.assertIs(self.reactor._poller, self.poller)
        self.assertNotIn(self.meter._gc, gc.callbacks)

    def test_everyCollectionIsObserved(self) -> None:
        gc.collect(0)
        gc.collect(2)
        self.assertEqual([g for g, _ in self.gcs], [0, 2])
        self.assertEqual(self.meter.longestGC, max(s for _, s in self.gcs))

    def test_freezeAndUnfreeze(self) -> None:
        """freeze() moves what is alive out of collection (not observed); uninstall undoes it."""
        self.meter.freeze()
        self.assertGreater(gc.get_freeze_count(), 0)
        self.assertEqual(self.gcs, [])  # the deliberate collection is not a pause to report
        self.meter.uninstall()
        self.assertEqual(gc.get_freeze_count(), 0)


class SurvivorTests(SynchronousTestCase):
    def test_survivorsOfFullCollectionsAreFrozen(self) -> None:
        """
        With survivors, what a full collection leaves is frozen too (and cyclic garbage made
        since is still freed first); only start-up's is frozen otherwise.
        """
        for survivors in (False, True):
            meter = ReactorMeter(Clock())
            meter.install(FakeReactor())
            self.addCleanup(meter.uninstall)
            meter.freeze(survivors=survivors)
            frozen = gc.get_freeze_count()
            kept = [[i] for i in range(1000)]
            cycle: list[Any] = []
            cycle.append(cycle)
            ref = weakref.ref(Node(cycle))
            gc.collect(2)
            self.assertIsNone(ref())  # the garbage cycle was collected, not frozen
            grew = gc.get_freeze_count() - frozen
            if survivors:
                self.assertGreaterEqual(grew, len(kept))
            else:
                self.assertEqual(grew, 0)
            meter.uninstall()
            self.assertEqual(gc.get_freeze_count(), 0)
            del kept, cycle

    def test_survivorsMakeFullCollectionsFrequent(self) -> None:
        """
        With survivors, the older generations are collected often (so each collection walks
        little); without, and after uninstall, the collector's thresholds are its own.
        """
        before = gc.get_threshold()
        for survivors, older in ((False, before[1:]), (True, (MIDDLE_AFTER, FULL_AFTER))):
            meter = ReactorMeter(Clock())
            meter.install(FakeReactor())
            meter.freeze(survivors=survivors)
            self.assertEqual(gc.get_threshold(), (before[0], *older))
            meter.uninstall()
            self.assertEqual(gc.get_threshold(), before)


class Node:
    def __init__(self, other: Any) -> None:
        self.other = other
        self.me = self


class FallbackTests(SynchronousTestCase):
    def test_doIterationIsWrappedWithoutAPoller(self) -> None:
        """A reactor without _poller (select) has its doIteration timed, and given back."""
        now = [0.0]
        self.patch(stall, "monotonic", lambda: now[0])
        calls: list[Any] = []

        class SelectReactor:
            def doIteration(self, timeout: float | None) -> None:
                calls.append(timeout)

        r = SelectReactor()
        stalls: list[float] = []
        meter = ReactorMeter(Clock(), stalls.append)
        meter.install(r)
        r.doIteration(1.0)
        now[0] += 0.01
        r.doIteration(2.0)
        self.assertEqual((calls, stalls), ([1.0, 2.0], [0.01]))
        meter.uninstall()
        self.assertEqual(r.doIteration.__func__, SelectReactor.doIteration)  # type: ignore[attr-defined]


class MetricsTests(SynchronousTestCase):
    def test_namesAndBuckets(self) -> None:
        """The families the benchmark reads, with the buckets it expects."""
        metrics = Metrics(lambda: [], lambda: {}, None)
        meter = ReactorMeter(Clock())
        metrics.watch(meter)
        meter.stalled(0.004)
        meter._gcStart = 0.0
        self.patch(stall, "monotonic", lambda: 0.012)
        meter._gc("stop", {"generation": 1})
        families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
        stalls = families["pushsvc_reactor_stall_seconds"]
        self.assertEqual(stalls.type, "histogram")
        buckets = {s.labels["le"]: s.value for s in stalls.samples if s.name.endswith("_bucket")}
        self.assertEqual(
            list(buckets),
            [
                "0.001", "0.002", "0.003", "0.005", "0.0075", "0.01", "0.015", "0.02", "0.03",
                "0.05", "0.075", "0.1", "0.2", "0.5", "1.0", "2.0", "5.0", "+Inf",
            ],
        )  # fmt: skip
        self.assertEqual((buckets["0.003"], buckets["0.005"]), (0, 1))
        longest = families["pushsvc_reactor_stall_longest_seconds"]
        self.assertEqual((longest.type, longest.samples[0].value), ("gauge", 0.004))
        pauses = families["pushsvc_gc_pause_seconds"]
        byGen = {
            s.labels["generation"]: s.value for s in pauses.samples if s.name.endswith("_count")
        }
        self.assertEqual(byGen, {"0": 0, "1": 1, "2": 0})
        self.assertEqual(families["pushsvc_gc_pause_longest_seconds"].samples[0].value, 0.012)


class ProcessFiguresTests(SynchronousTestCase):
    def test_openFdsCountedInAThread(self) -> None:
        """
        The process metrics keep prometheus_client's names; open fds are counted on the spot
        the first time (the registry's own look at the names), then in a thread (one at a time),
        each scrape giving the last count.
        """
        calls: list[Any] = []
        metrics = Metrics(lambda: [], lambda: {}, None, callInThread=calls.append)

        def scrape() -> dict[str, float]:
            text = metrics.render().decode()
            return {
                f.name: f.samples[0].value
                for f in text_string_to_metric_families(text)
                if f.name.startswith("process_")
            }

        names = set(scrape())
        self.assertEqual(
            names,
            {
                "process_virtual_memory_bytes",
                "process_resident_memory_bytes",
                "process_start_time_seconds",
                "process_cpu_seconds",
                "process_open_fds",
                "process_max_fds",
            },
        )
        self.assertEqual(len(calls), 1)  # the next count, in a thread
        calls.pop()()
        before = scrape()["process_open_fds"]  # that count; the next one is started
        files = [open(__file__) for _ in range(5)]  # noqa: SIM115
        for f in files:
            self.addCleanup(f.close)
        self.assertEqual(scrape()["process_open_fds"], before)
        self.assertEqual(len(calls), 1)  # one count at a time
        calls.pop()()
        self.assertEqual(scrape()["process_open_fds"], before + 5)


class RealReactorTests(TestCase):
    @inlineCallbacks
    def test_aBusyCallIsAStall(self) -> Any:
        """On the running reactor, a timed call that works 20 ms is seen as a stall of 20+ ms."""
        stalls: list[float] = []
        meter = ReactorMeter(reactor, stalls.append)
        meter.install(reactor)
        self.addCleanup(meter.uninstall)

        def busy() -> None:
            end = time.monotonic() + 0.02
            while time.monotonic() < end:
                pass

        d: Deferred[None] = Deferred()
        reactor.callLater(0, d.callback, None)
        yield d  # the first poll after install has returned: the meter counts from there
        reactor.callLater(0, busy)
        for _ in range(3):  # a few iterations: the poll after the busy call has come
            d = Deferred()
            reactor.callLater(0, d.callback, None)
            yield d
        self.assertTrue(any(s >= 0.02 for s in stalls), stalls)
