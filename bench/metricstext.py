"""
The reactor-stall and GC-pause figures of the benchmark, from pushsvc's admin C{/metrics}.

pushsvc exposes (prometheus text format) a histogram of reactor iterations busy for 1 ms or more
and one of GC pauses (labelled by generation), each with a gauge of the longest since start:

    pushsvc_reactor_stall_seconds_bucket{le="0.005"} 12
    pushsvc_reactor_stall_longest_seconds 0.0042
    pushsvc_gc_pause_seconds_bucket{generation="2",le="0.01"} 3
    pushsvc_gc_pause_longest_seconds 0.0081

C{run.py} reads C{/metrics} before and after a scenario; L{longest} turns the two readings into
the scenario's longest stall (or pause) in ms: the gauge's new value when it rose during the
scenario, else "< B" where B is the upper bound of the highest bucket that grew, else "< 1"
(nothing of 1 ms or more), and "n/a" when the server has no such metric.
"""

from __future__ import annotations

import http.client
import math
import re

STALL = ("pushsvc_reactor_stall_seconds", "pushsvc_reactor_stall_longest_seconds")
GC_PAUSE = ("pushsvc_gc_pause_seconds", "pushsvc_gc_pause_longest_seconds")

# (name, sorted (label, value) pairs) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?\s*$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def parseMetrics(text: str) -> Samples:
    """The samples of a prometheus text exposition (comments and unparsable lines skipped)."""
    samples: Samples = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if m is None:
            continue
        name, labelText, valueText = m.groups()
        labels = []
        if labelText:
            for lm in _LABEL.finditer(labelText):
                value = lm.group(2).replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
                labels.append((lm.group(1), value))
        try:
            value = float(valueText)
        except ValueError:
            continue
        samples[(name, tuple(sorted(labels)))] = value
    return samples


def scrape(port: int, timeout: float = 10.0) -> Samples | None:
    """C{GET /metrics} from the admin listener on 127.0.0.1:C{port}; None when it fails."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            return None
        return parseMetrics(body.decode("utf-8", "replace"))
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _gauge(samples: Samples, name: str) -> float | None:
    values = [v for (n, _), v in samples.items() if n == name]
    return max(values) if values else None


def _buckets(samples: Samples, histogram: str) -> dict[float, float]:
    """Cumulative count per upper bound, summed over the other labels (e.g. generation)."""
    out: dict[float, float] = {}
    for (name, labels), value in samples.items():
        if name != f"{histogram}_bucket":
            continue
        le = dict(labels).get("le")
        if le is None:
            continue
        bound = math.inf if le in ("+Inf", "Inf", "inf") else float(le)
        out[bound] = out.get(bound, 0.0) + value
    return out


def grown(before: Samples | None, after: Samples | None, histogram: str) -> dict[float, float]:
    """How many observations fell in each bucket (upper bound, s) between two readings."""
    if before is None or after is None:
        return {}
    now, then = _buckets(after, histogram), _buckets(before, histogram)
    out: dict[float, float] = {}
    below = 0.0
    belowThen = 0.0
    for bound in sorted(now):
        count = (now[bound] - below) - (then.get(bound, 0.0) - belowThen)
        below, belowThen = now[bound], then.get(bound, 0.0)
        if count > 0:
            out[bound] = count
    return out


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.1f}" if ms >= 1 else f"{ms:.2f}"


def _bound(seconds: float) -> str:
    return f"{seconds * 1000:g}"


def longest(
    before: Samples | None,
    after: Samples | None,
    metric: tuple[str, str],
    less: dict[float, float] | None = None,
) -> str:
    """
    The longest stall (or pause) between two readings of C{/metrics}, in ms, as text: see the
    module docstring. C{metric} is (histogram, gauge), e.g. L{STALL}. C{less}: observations to
    leave out, by bucket (L{grown} between two other readings), e.g. the stall of the
    C{/metrics} read that opened the window, as measured for the read before it.
    """
    histogram, gauge = metric
    if before is None or after is None:
        return "n/a"
    high = _gauge(after, gauge)
    buckets = _buckets(after, histogram)
    if high is None and not buckets:
        return "n/a"
    counts = grown(before, after, histogram)
    for bound, n in (less or {}).items():
        counts[bound] = counts.get(bound, 0.0) - n
    left = sorted(b for b, n in counts.items() if n > 0)
    low = _gauge(before, gauge)
    if high is not None and high > (low or 0.0):
        # the new longest is an observation of this window: exact, unless it was left out
        if not less or not buckets or (left and min(b for b in buckets if high <= b) == left[-1]):
            return _ms(high)
    if not left:
        return "< 1"
    top = left[-1]
    if math.isinf(top):
        finite = [b for b in sorted(buckets) if not math.isinf(b)]
        return f"> {_bound(finite[-1])}" if finite else "n/a"
    return f"< {_bound(top)}"
