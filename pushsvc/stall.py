"""
How long the reactor is busy between two waits for I/O, and how long the garbage collector
pauses: the two things that make every connection of the process wait at once.

L{ReactorMeter.install} wraps the reactor's poller (C{_poller}, epoll or poll): the time from
one poll's return to the next poll's call is the time the reactor spent on I/O dispatch, timed
calls and whatever they ran, during which no other connection is served. That costs two
C{time.monotonic()} calls per reactor iteration and no timer or wake-up of its own; only
iterations busy for at least L{STALL_MIN} are reported. On a reactor without a C{_poller} (the
select reactor), C{doIteration} is wrapped instead, which sees the timed calls but not the I/O
dispatch.

C{gc.callbacks} times every collection, by generation; L{ReactorMeter.freeze} keeps what
start-up left (and, by default, what each full collection leaves) out of later collections. A
stall over L{WARN_STALL} is logged,
throttled, with what is known: how many events the poll before it returned, how much of it the
collector took, and the caller's description (open connections).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from time import monotonic
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from pushsvc.http.logthrottle import Throttle

log = Logger()

INF = float("inf")
# With survivors frozen, the collector's thresholds: a middle-generation collection after every
# MIDDLE_AFTER + 1 young ones (CPython's default: 10), and a full one after every FULL_AFTER + 1
# middle ones (default 10), so that each walks only the few thousand objects made since: the
# longest pause while 19,800 connections arrive was ~28 ms with the defaults, 3.2 ms with these.
MIDDLE_AFTER = 3
FULL_AFTER = 0
STALL_MIN = 0.001  # iterations busy less than this are not observed
WARN_STALL = 0.25  # a warning (throttled) for a stall this long

Observe = Callable[[float], None]
ObserveGC = Callable[[int, float], None]


class _TimedPoller:
    """The reactor's poller, with its C{poll} timed; everything else passes through."""

    __slots__ = ("_poller", "_poll", "_meter")

    def __init__(self, poller: Any, meter: ReactorMeter) -> None:
        self._poller = poller
        self._poll = poller.poll
        self._meter = meter

    def poll(self, *args: Any) -> Any:
        meter = self._meter
        busy = monotonic() - meter.woke
        if busy >= STALL_MIN:
            meter.stalled(busy)
        try:
            events = self._poll(*args)
        finally:
            meter.woke = monotonic()
            meter.gcInIteration = 0.0
        meter.events = len(events)
        return events

    def __getattr__(self, name: str) -> Any:
        return getattr(self._poller, name)


class ReactorMeter:
    """
    The longest reactor stall and GC pause since start, and a callback for each (the metrics'
    histograms). One per service; L{install} and L{uninstall} with the service.
    """

    def __init__(
        self,
        clock: IReactorTime,
        observeStall: Observe | None = None,
        observeGC: ObserveGC | None = None,
        describe: Callable[[], str] | None = None,
    ) -> None:
        self.clock = clock
        self.observeStall = observeStall
        self.observeGC = observeGC
        self.describe = describe
        self.longestStall = 0.0
        self.longestGC = 0.0
        self.stalls = 0
        self.woke = monotonic()
        self.events = 0  # returned by the last poll
        self.gcInIteration = 0.0  # collector time since the last poll returned
        self._gcStart = 0.0
        self.frozen = False
        self.freezeSurvivors = False
        self._threshold: tuple[int, int, int] | None = None  # the collector's, before freeze()
        self._reactor: Any = None
        self._wrapped: str | None = None  # "_poller" or "doIteration"
        self._throttle = Throttle(
            log, clock, "{count} more reactor stalls over 250 ms in the last {period:.0f}s"
        )

    # -- the reactor ---------------------------------------------------------------------------

    def install(self, reactor: Any) -> None:
        """Time C{reactor}'s iterations and the collector's runs."""
        if self._reactor is not None:
            return
        self._reactor = reactor
        poller = getattr(reactor, "_poller", None)
        if poller is not None and hasattr(poller, "poll"):
            reactor._poller = _TimedPoller(poller, self)
            self._wrapped = "_poller"
        elif hasattr(reactor, "doIteration"):
            inner = reactor.doIteration

            def doIteration(timeout: float | None) -> None:
                busy = monotonic() - self.woke
                if busy >= STALL_MIN:
                    self.stalled(busy)
                try:
                    inner(timeout)
                finally:
                    self.woke = monotonic()
                    self.gcInIteration = 0.0

            reactor.doIteration = doIteration
            self._wrapped = "doIteration"
        # Not from now: the rest of start-up (twistd, the reactor's start) is not a stall. The
        # first poll's return starts the count.
        self.woke = INF
        gc.callbacks.append(self._gc)

    def uninstall(self) -> None:
        reactor, self._reactor = self._reactor, None
        if reactor is None:
            return
        poller = getattr(reactor, "_poller", None)
        if self._wrapped == "_poller" and isinstance(poller, _TimedPoller):
            if poller._meter is self:
                reactor._poller = poller._poller
        elif self._wrapped == "doIteration":
            del reactor.doIteration  # the class's method again
        self._wrapped = None
        if self._gc in gc.callbacks:
            gc.callbacks.remove(self._gc)
        if self.frozen:
            self.frozen = self.freezeSurvivors = False
            gc.unfreeze()
        if self._threshold is not None:
            gc.set_threshold(*self._threshold)
            self._threshold = None

    def freeze(self, survivors: bool = False) -> None:
        """
        Start-up is over: collect once, then move every object left into the collector's
        permanent generation (C{gc.freeze}), so that no later collection walks the modules,
        classes and long-lived parts of the service again. That collection is not observed.

        With C{survivors}, so are the survivors of every later full collection: a full
        collection then walks only what was made since the one before (~0.3 s at 19,000
        connections otherwise, growing with them). The price: a cycle that forms later through
        a frozen object is never collected. A connection leaves no cycle (the tests say so),
        so what connections leave behind is freed as ever, by reference counting. The
        collector's thresholds are then lowered (L{MIDDLE_AFTER}, L{FULL_AFTER}), so each
        collection walks little: what connections arriving in a burst leave is frozen a few
        thousand objects at a time, instead of walked all at once by the next full collection.
        """
        self.freezeSurvivors = survivors
        if survivors and self._threshold is None:
            self._threshold = gc.get_threshold()
            gc.set_threshold(self._threshold[0], MIDDLE_AFTER, FULL_AFTER)
        if self.frozen:
            return
        observing = self._gc in gc.callbacks
        if observing:
            gc.callbacks.remove(self._gc)
        try:
            start = monotonic()
            gc.collect()
            gc.freeze()
            took = monotonic() - start
        finally:
            if observing:
                gc.callbacks.append(self._gc)
        self.woke += took  # nor is it part of this iteration's busy time: it is start-up's
        self.frozen = True
        log.info(
            "start-up over: {count} objects frozen out of garbage collection ({ms:.0f} ms)",
            count=gc.get_freeze_count(),
            ms=took * 1000,
        )

    def stalled(self, busy: float) -> None:
        """The reactor was busy C{busy} seconds between two polls."""
        self.stalls += 1
        if busy > self.longestStall:
            self.longestStall = busy
        if self.observeStall is not None:
            self.observeStall(busy)
        if busy >= WARN_STALL:
            self._throttle.warn(
                "reactor stalled {busy:.0f} ms ({gc:.0f} ms of it in garbage collection) after "
                "a poll that returned {events} events; {state}",
                busy=busy * 1000,
                gc=self.gcInIteration * 1000,
                events=self.events,
                state=self.describe() if self.describe is not None else "",
            )

    # -- the collector -------------------------------------------------------------------------

    def _gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gcStart = monotonic()
            return
        pause = monotonic() - self._gcStart
        self.gcInIteration += pause
        if pause > self.longestGC:
            self.longestGC = pause
        generation = info.get("generation", -1)
        if self.observeGC is not None:
            self.observeGC(generation, pause)
        if generation == 2 and self.freezeSurvivors:
            gc.freeze()  # see freeze()
