"""
Many idle subscribers on one pushsvc: RSS per connection, GC pauses while they connect, and the
reactor's stalls while they sit idle over a full keep-alive round (server pings, wsload pongs).

    python bench/idlescale.py --connections 19000 --idle 45

Reads the server's /metrics (admin listener): pushsvc_gc_pause_seconds,
pushsvc_reactor_stall_seconds and their _longest_ gauges. One wsload process holds the
subscribers (from 127.0.0.1: at most ~28,000 with the default ephemeral port range, and the
process's open-file limit).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # noqa: E402
from loadgen import LoadGen  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    url = f"http://127.0.0.1:{port}/metrics"
    text = urllib.request.urlopen(url, timeout=60).read().decode()  # noqa: S310 -- loopback
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def histogram(
    before: Samples, after: Samples, name: str, labels: dict[str, str] | None = None
) -> tuple[int, float, str]:
    """Observations between two scrapes: count, sum, and the smallest bucket holding them all."""
    extra = tuple(sorted((labels or {}).items()))

    def get(s: Samples, suffix: str, more: tuple[tuple[str, str], ...] = ()) -> float:
        return s.get((name + suffix, tuple(sorted(extra + more))), 0.0)

    count = int(get(after, "_count") - get(before, "_count"))
    total = get(after, "_sum") - get(before, "_sum")
    buckets = sorted(
        (float(dict(k[1])["le"]), dict(k[1])["le"])
        for k in after
        if k[0] == name + "_bucket" and all(item in k[1] for item in extra)
    )
    for _, le in buckets:
        if get(after, "_bucket", (("le", le),)) - get(before, "_bucket", (("le", le),)) >= count:
            return count, total, le
    return count, total, "?"


def gauge(s: Samples, name: str) -> float:
    return s.get((name, ()), float("nan"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=19000)
    p.add_argument("--idle", type=float, default=45.0, help="seconds idle (ping 30 s, pong 30 s)")
    p.add_argument("--pushsvc-arg", action="append", default=[])
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="idlescale-"))
    admin = bench.freePort()
    extra = [
        "--admin-listen",
        f"tcp:{admin}:interface=127.0.0.1",
        "--max-connections",
        str(args.connections + 1000),
        "--activity-timeout",
        "10",
        *args.pushsvc_arg,
    ]
    server = bench.startServer("pushsvc", work, 100, extra)
    gen = LoadGen(server.target)
    try:
        pid = server.proc.pid
        deadline = time.monotonic() + 30
        while True:
            try:
                scrape(admin)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        gen.connect(20, time.monotonic() + 20)
        gen.closeAll()
        time.sleep(2)
        rss0 = bench.rssKiB(pid)
        m0 = scrape(admin)
        start = time.monotonic()
        ready = gen.connect(args.connections, time.monotonic() + 600, concurrency=64)
        took = time.monotonic() - start
        m1 = scrape(admin)
        time.sleep(3)
        rss1 = bench.rssKiB(pid)
        print(f"connected {ready}/{args.connections} in {took:.1f}s; closed {gen.closedCodes}")
        print(
            f"RSS {rss0} -> {rss1} KiB: {(rss1 - rss0) / max(1, ready):.2f} KiB per idle "
            "subscribed connection"
        )
        for g in ("0", "1", "2"):
            n, total, le = histogram(m0, m1, "pushsvc_gc_pause_seconds", {"generation": g})
            print(f"GC gen {g} while connecting: {n} pauses, {total * 1000:.1f} ms, all <= {le}")
        print(f"longest GC pause since start: {gauge(m1, 'pushsvc_gc_pause_longest_seconds'):.4f}")
        n, total, le = histogram(m0, m1, "pushsvc_reactor_stall_seconds")
        print(f"stalls >= 1 ms while connecting: {n}, all <= {le} s")
        m2 = scrape(admin)
        time.sleep(args.idle)
        m3 = scrape(admin)
        n, total, le = histogram(m2, m3, "pushsvc_reactor_stall_seconds")
        gcs = sum(
            histogram(m2, m3, "pushsvc_gc_pause_seconds", {"generation": g})[0]
            for g in ("0", "1", "2")
        )
        status: Any = gen._command("status", 30)
        print(
            f"idle {args.idle:.0f}s: {n} stalls >= 1 ms ({total * 1000:.1f} ms in all), all <= "
            f"{le} s; {gcs} GC runs; still ready {status['ready']}, closed {gen.closedCodes}"
        )
        print(
            "longest stall since start: "
            f"{gauge(m3, 'pushsvc_reactor_stall_longest_seconds'):.4f} s; "
            f"RSS now {bench.rssKiB(pid)} KiB"
        )
        for line in (work / "pushsvc-twistd.log").read_text(errors="replace").splitlines():
            if "at most" in line or "frozen" in line or "stalled" in line:
                print("log:", line[-200:])
    finally:
        gen.closeAll()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
