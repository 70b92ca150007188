"""
The benchmark's latency pictures: one PNG per scenario, each server of the run one line of the
cumulative distribution of its publish-to-receive latencies (wsload's samples, raw int64 ns).

Needs matplotlib (C{pip install -e '.[bench]'}); L{missing} says how to install it when it is not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

INSTALL = "pip install -e '.[bench]'  (or: pip install matplotlib)"


def missing() -> str | None:
    """None when the pictures can be drawn, else what to install."""
    try:
        import matplotlib  # noqa: F401
        import numpy  # noqa: F401
    except ImportError:
        return INSTALL
    return None


def curve(path: Path, points: int = 1500) -> tuple[Any, Any, int]:
    """
    (latencies in ms, fractions) of the samples in C{path}, at most ~C{points} of them: evenly
    spaced up to the 99th percentile, then thicker towards the maximum, so the tail stays exact.
    """
    import numpy as np

    ns = np.fromfile(path, dtype=np.int64)
    n = len(ns)
    if n == 0:
        return np.array([]), np.array([]), 0
    ns.sort()
    body = np.linspace(0, 0.99 * (n - 1), points)
    tail = (n - 1) - np.geomspace(0.01 * (n - 1) + 1, 1, points // 2) + 1
    index = np.unique(np.concatenate([body, tail, [n - 1]]).round().astype(np.int64))
    index = index[(index >= 0) & (index < n)]
    return ns[index] / 1e6, (index + 1) / n, n


def draw(out: Path, title: str, series: list[tuple[str, Path]]) -> bool:
    """
    One PNG at C{out}: for each (server, samples file) a line of the fraction of deliveries
    received within x ms. @return: False when no series had samples (nothing written).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, (ax, tail) = plt.subplots(
        2, 1, figsize=(9, 7.5), dpi=110, sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    drawn = 0
    lowest, highest, fewest = np.inf, 0.0, np.inf
    for name, path in series:
        x, y, n = curve(path)
        if n == 0:
            continue
        p50 = float(np.interp(0.5, y, x))
        p99 = float(np.interp(0.99, y, x))
        label = f"{name}: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {x[-1]:.1f} ms ({n:,} samples)"
        (line,) = ax.step(x, y, where="post", linewidth=1.6, label=label)
        # the tail: the fraction received at x or later, down to one sample (the maximum)
        slower = np.clip(1.0 - y + 1.0 / n, 1.0 / n, 1.0)
        tail.step(x, slower, where="post", linewidth=1.6, color=line.get_color())
        lowest, highest = min(lowest, float(x[0])), max(highest, float(x[-1]))
        fewest = min(fewest, 1.0 / n)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return False
    ax.set_xscale("log")
    ax.set_xlim(max(lowest * 0.8, 0.01), highest * 1.25)
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    tail.xaxis.set_major_formatter(plain)
    # within about a decade the minor ticks (2, 3, 5 ...) need labels; beyond it they crowd
    tail.xaxis.set_minor_formatter(plain if highest / max(lowest, 1e-9) < 30 else NullFormatter())
    ax.set_ylim(0, 1.01)
    tail.set_yscale("log")
    tail.set_ylim(fewest * 0.7, 1.05)
    tail.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    for q, axis in ((0.5, ax), (0.99, ax), (0.01, tail), (0.001, tail)):
        axis.axhline(q, color="grey", linewidth=0.6, linestyle=":")
        p = f"p{(q if axis is ax else 1 - q) * 100:g}"
        axis.annotate(
            p,
            (1.0, q),
            xycoords=("axes fraction", "data"),
            xytext=(3, -3),
            textcoords="offset points",
            fontsize=8,
            color="grey",
        )
    ax.set_ylabel("fraction received within x")
    tail.set_ylabel("fraction received at x or later\n(log scale: the tail)")
    tail.set_xlabel("publish-to-receive latency, ms (log scale)")
    ax.set_title(f"Latency CDF: {title}")
    for axis in (ax, tail):
        axis.grid(True, which="both", linewidth=0.3, alpha=0.6)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return True
