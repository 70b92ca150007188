"""
The recording part of the inside view (in the manner of App Engine's appstats): every request
and the calls it made (store, broker, signature check, fan-out), with their start offsets and
durations, in a memory ring of the last N requests; per endpoint and per call kind a count,
errors and latency quantiles.

The request being handled is found through a C{ContextVar}: L{pushsvc.recording.wrap} sets it
while a resource renders, and Twisted runs each coroutine (C{ensureDeferred}) in a copy of the
context it was started in, so calls made after an C{await} are still the request's. A call made
outside any request (a Redis message, the store opening) is counted in the aggregates only.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IReactorTime

DEFAULT_SIZE = 1000
MAX_CALLS = 200  # calls kept per request; more are counted, not kept
SAMPLES = 1024  # durations kept per aggregate for its quantiles
CONSOLE_BACKLOG = 200  # debug console events kept for a console that opens later
MAX_DATA = 200  # characters of event data shown in the debug console


@dataclass(slots=True)
class Call:
    """One call a request made: C{start} and C{duration} in seconds from the request's start."""

    kind: str  # store, broker, auth, fanout
    name: str
    start: float
    duration: float = 0.0
    error: bool = False
    detail: dict[str, Any] = field(default_factory=dict)

    def asJSON(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "start_ms": round(self.start * 1000, 3),
            "duration_ms": round(self.duration * 1000, 3),
            "error": self.error,
            "detail": self.detail,
        }


@dataclass(slots=True)
class RequestRecord:
    """One request: what it asked for, how it ended, and its calls."""

    id: int
    method: str
    path: str
    endpoint: str
    appId: str | None
    startedAt: float  # clock seconds
    status: int | None = None
    duration: float | None = None
    calls: list[Call] = field(default_factory=list)
    droppedCalls: int = 0

    def asJSON(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "method": self.method,
            "path": self.path,
            "endpoint": self.endpoint,
            "app_id": self.appId,
            "status": self.status,
            "started_at": self.startedAt,
            "duration_ms": None if self.duration is None else round(self.duration * 1000, 3),
            "calls": [c.asJSON() for c in self.calls],
            "dropped_calls": self.droppedCalls,
        }


class Aggregate:
    """Count, errors, total time and the last L{SAMPLES} durations of one endpoint or call kind."""

    __slots__ = ("count", "errors", "total", "samples")

    def __init__(self) -> None:
        self.count = 0
        self.errors = 0
        self.total = 0.0
        self.samples: deque[float] = deque(maxlen=SAMPLES)

    def add(self, duration: float, error: bool) -> None:
        self.count += 1
        self.errors += error
        self.total += duration
        self.samples.append(duration)

    def asJSON(self) -> dict[str, Any]:
        ordered = sorted(self.samples)

        def q(p: float) -> float | None:
            if not ordered:
                return None
            return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 3)

        return {
            "count": self.count,
            "errors": self.errors,
            "mean_ms": round(self.total / self.count * 1000, 3) if self.count else None,
            "p50_ms": q(0.50),
            "p95_ms": q(0.95),
            "p99_ms": q(0.99),
        }


ENVELOPE = "envelope"  # a console item still holding the raw hub envelope

ConsoleItem = tuple[str, float, str, dict[str, Any]]


def _decoded(item: ConsoleItem) -> ConsoleItem | None:
    if item[2] != ENVELOPE:
        return item
    from pushsvc.recording.wrap import envelopeFields

    seen = envelopeFields(item[3]["envelope"])
    return None if seen is None else (item[0], item[1], seen[0], seen[1])


_current: ContextVar[RequestRecord | None] = ContextVar("pushsvc_request", default=None)

Observer = Callable[[str, float], None]


def truncate(text: str, limit: int = MAX_DATA) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


class Recorder:
    """
    The ring of the last C{size} requests and the aggregates. C{clock} gives every time.

    C{observeRequest(endpoint, seconds)} and C{observeFanOut(seconds, publishToFanOut)} are
    called as requests end and fan-outs happen (the metrics' histograms); None by default.
    """

    def __init__(self, clock: IReactorTime, size: int = DEFAULT_SIZE) -> None:
        self.clock = clock
        self.size = size
        self.ring: deque[RequestRecord] = deque(maxlen=size)
        self._byId: dict[int, RequestRecord] = {}
        self._ids = itertools.count(1)
        self.endpoints: dict[str, Aggregate] = {}
        self.callKinds: dict[str, Aggregate] = {}
        self.requestsByApp: dict[tuple[str, str], int] = {}  # (endpoint, app id) -> count
        self.recorded = 0
        self.fanOutsByApp: dict[str, list[int]] = {}  # app id -> [fan-outs, subscribers reached]
        self.observeRequest: Observer | None = None
        self.observeFanOut: Callable[[float, float | None], None] | None = None
        # The debug console: (app id, clock seconds, kind, fields) kept and handed to listeners.
        self.console: deque[tuple[str, float, str, dict[str, Any]]] = deque(maxlen=CONSOLE_BACKLOG)
        self.consoleListeners: set[Callable[[str, float, str, dict[str, Any]], None]] = set()

    # -- requests ------------------------------------------------------------------------

    def begin(self, method: str, path: str, endpoint: str, appId: str | None) -> RequestRecord:
        """Start recording a request; it joins the ring now (shown as in progress)."""
        record = RequestRecord(next(self._ids), method, path, endpoint, appId, self.clock.seconds())
        ring = self.ring
        if len(ring) == ring.maxlen:
            self._byId.pop(ring[0].id, None)
        ring.append(record)
        self._byId[record.id] = record
        return record

    def end(self, record: RequestRecord, status: int) -> None:
        """The request was answered with C{status}."""
        if record.duration is not None:
            return
        record.status = status
        record.duration = duration = self.clock.seconds() - record.startedAt
        self.recorded += 1
        agg = self.endpoints.get(record.endpoint)
        if agg is None:
            agg = self.endpoints[record.endpoint] = Aggregate()
        agg.add(duration, status >= 500)
        if record.appId is not None:
            key = (record.endpoint, record.appId)
            self.requestsByApp[key] = self.requestsByApp.get(key, 0) + 1
        if self.observeRequest is not None:
            self.observeRequest(record.endpoint, duration)

    @staticmethod
    def current() -> RequestRecord | None:
        return _current.get()

    @staticmethod
    def enter(record: RequestRecord | None) -> Any:
        """Make C{record} the current request; returns the token for L{leave}."""
        return _current.set(record)

    @staticmethod
    def leave(token: Any) -> None:
        _current.reset(token)

    def get(self, requestId: int) -> RequestRecord | None:
        return self._byId.get(requestId)

    def recent(self, limit: int) -> Iterator[RequestRecord]:
        """The most recent first."""
        return itertools.islice(reversed(self.ring), limit)

    # -- calls ---------------------------------------------------------------------------

    def start(self, kind: str, name: str, detail: dict[str, Any] | None = None) -> Call | None:
        """
        A call begins: returns it (attached to the current request), or None outside a
        request. Finish it with L{finish}.
        """
        record = _current.get()
        now = self.clock.seconds()
        if record is None:
            return Call(kind, name, now, 0.0, False, detail or {})  # counted, not kept
        call = Call(kind, name, now - record.startedAt, 0.0, False, detail or {})
        if len(record.calls) < MAX_CALLS:
            record.calls.append(call)
        else:
            record.droppedCalls += 1
        return call

    def finish(self, call: Call, began: float, error: bool = False) -> None:
        """C{call}, begun at clock time C{began}, has ended."""
        call.duration = self.clock.seconds() - began
        call.error = error
        agg = self.callKinds.get(call.kind)
        if agg is None:
            agg = self.callKinds[call.kind] = Aggregate()
        agg.add(call.duration, error)

    def fanOut(
        self,
        appId: str,
        channel: str,
        subscribers: int,
        frameBytes: int,
        began: float,
        ended: float,
        queued: bool,
    ) -> None:
        """One fan-out (not one per subscriber): a call of the current request, if any."""
        record = _current.get()
        detail = {
            "channel": truncate(channel, 80),
            "subscribers": subscribers,
            "bytes": frameBytes * subscribers,
            "queued": queued,
        }
        sinceBroker: float | None = None
        if record is not None:
            call = Call("fanout", "deliver", began - record.startedAt, ended - began, False, detail)
            for earlier in reversed(record.calls):
                if earlier.kind == "broker" and earlier.name == "publish":
                    sinceBroker = call.start - earlier.start
                    break
            if len(record.calls) < MAX_CALLS:
                record.calls.append(call)
            else:
                record.droppedCalls += 1
        counts = self.fanOutsByApp.get(appId)
        if counts is None:
            counts = self.fanOutsByApp[appId] = [0, 0]
        counts[0] += 1
        counts[1] += subscribers
        agg = self.callKinds.get("fanout")
        if agg is None:
            agg = self.callKinds["fanout"] = Aggregate()
        agg.add(ended - began, False)
        if self.observeFanOut is not None:
            self.observeFanOut(ended - began, sinceBroker)

    # -- debug console -------------------------------------------------------------------

    def consoleEvent(self, appId: str, kind: str, fields: dict[str, Any]) -> None:
        """Something the debug console shows (C{fields} already truncated, never secrets)."""
        item = (appId, self.clock.seconds(), kind, fields)
        self.console.append(item)
        for listener in list(self.consoleListeners):
            listener(*item)

    def consoleEnvelope(self, appId: str, message: bytes) -> None:
        """
        A hub envelope the broker carries (an event, a client event, a member change): kept as
        it is, and decoded (L{consoleItems}) only when a console shows it -- not per publish.
        """
        item = (appId, self.clock.seconds(), ENVELOPE, {"envelope": message})
        self.console.append(item)
        if self.consoleListeners:
            shown = _decoded(item)
            if shown is not None:
                for listener in list(self.consoleListeners):
                    listener(*shown)

    def consoleItems(self) -> list[tuple[str, float, str, dict[str, Any]]]:
        """The backlog, oldest first, with envelopes decoded."""
        return [shown for shown in map(_decoded, list(self.console)) if shown is not None]

    # -- aggregates ----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "recorded": self.recorded,
            "kept": len(self.ring),
            "size": self.size,
            "endpoints": {k: v.asJSON() for k, v in sorted(self.endpoints.items())},
            "calls": {k: v.asJSON() for k, v in sorted(self.callKinds.items())},
        }
