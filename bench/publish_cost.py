"""
What one HTTP API publish costs the server, in CPU: the way L{run} measures (``twistd -n pushsvc``
pinned to CPU 0, this process and wsload on CPU 1, server CPU = utime+stime from /proc/PID/stat
over the phase), with ONE Pusher subscriber.

  1. N signed ``POST /apps/{id}/events`` (default 5,000), one at a time on one keep-alive
     connection: the next is sent once the reply came and the subscriber got the event.
  2. N / 10 signed ``POST /apps/{id}/batch_events`` of 10 events each, the same way.

Prints server CPU µs per publish (per batch, and per event of a batch) and the deliveries
checked by wsload (lost, duplicated, out of order: all must be 0).

    python bench/publish_cost.py [--publishes 5000] [--profile DIR] [--pushsvc-arg=--no-recording]

``--profile DIR`` samples the server with py-spy (``pip install py-spy``) during each phase, while
it holds the GIL (the idle reactor is left out), raw collapsed stacks in DIR/<phase>.txt (the
figures of such a run are not comparable).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from loadgen import CHANNEL, EVENT, LoadGen, PhaseStats, eventData  # noqa: E402
from run import (  # noqa: E402
    APP_ID,
    CLK_TCK,
    LOAD_CPU,
    Phase,
    Server,
    measured,
    say,
    signedRequest,
    startServer,
)

BATCH = 10


def eventsRequest(port: int, frameBytes: int) -> Callable[[int, int], bytes]:
    def make(seq: int, sentNs: int) -> bytes:
        event = {"name": EVENT, "channel": CHANNEL, "data": eventData(seq, sentNs, frameBytes)}
        body = json.dumps(event, separators=(",", ":")).encode()
        return signedRequest(port, f"/apps/{APP_ID}/events", body)

    return make


def batchRequest(port: int, frameBytes: int) -> Callable[[int, int], bytes]:
    def make(seq: int, sentNs: int) -> bytes:
        batch = [
            {"name": EVENT, "channel": CHANNEL, "data": eventData(seq + i, sentNs, frameBytes)}
            for i in range(BATCH)
        ]
        body = json.dumps({"batch": batch}, separators=(",", ":")).encode()
        return signedRequest(port, f"/apps/{APP_ID}/batch_events", body)

    return make


def oneAtATime(
    gen: LoadGen,
    make: Callable[[int, int], bytes],
    requests: int,
    eventsPer: int,
    stall: float = 10.0,
) -> PhaseStats:
    """
    Send C{requests} requests of C{eventsPer} events each, the next once the previous one is
    answered and every event of it delivered. C{stats.published} counts events answered 2xx.
    """
    stats = gen.newPhase()
    stats.started = time.monotonic()
    pub = gen.pub
    assert pub is not None
    for _ in range(requests):
        seq = gen.seq
        gen.seq += eventsPer
        gen.pubWaiting = True
        answered = stats.published + stats.publishErrors
        pub.sendall(make(seq, time.monotonic_ns()))
        deadline = time.monotonic() + stall
        while gen.pubWaiting or gen.done < gen.seq:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no reply or delivery of request {seq} within {stall:g}s")
            gen.pump(0.05)
            if not gen.pubWaiting and stats.publishErrors > 0:
                raise RuntimeError("a publish was refused: see the server's log")
        if stats.published + stats.publishErrors != answered + 1:
            raise RuntimeError("one reply expected per request")
        stats.published += eventsPer - 1  # _onPublisher counted the request once
    return gen._endPhase()


def userSystem(pid: int) -> tuple[float, float]:
    """utime and stime of process C{pid}, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def profiler(server: Server, name: str, profile: Path | None) -> subprocess.Popen[bytes] | None:
    """
    py-spy sampling C{server} into C{profile}/<name>.txt, only while it holds the GIL (so the
    idle reactor, waiting in epoll, is left out): raw collapsed stacks.
    """
    if profile is None:
        return None
    pyspy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if pyspy is None:
        raise SystemExit("bench: --profile needs py-spy (pip install py-spy)")
    profile.mkdir(parents=True, exist_ok=True)
    argv = [pyspy, "record", "--format", "raw", "--rate", "1000", "--gil", "--nonblocking"]
    argv += ["--output", str(profile / f"{name}.txt"), "--pid", str(server.pid)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # py-spy attaches
    return proc


def stopProfiler(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


def report(
    phase: Phase, requests: int, eventsPer: int, what: str, split: tuple[float, float]
) -> dict[str, float]:
    stats = phase.stats
    perRequest = phase.cpu / requests * 1e6
    lost = stats.lost()
    say(
        f"{what}: {requests} requests, {stats.published} events, {stats.received} deliveries "
        f"(lost {lost}, dup {stats.duplicated}, out of order {stats.outOfOrder}); server CPU "
        f"{phase.cpu:.2f} s = {perRequest:.1f} us per request"
        + (f", {perRequest / eventsPer:.1f} us per event" if eventsPer > 1 else "")
        + f" (user {split[0] / requests * 1e6:.0f}, system {split[1] / requests * 1e6:.0f})"
    )
    if lost or stats.duplicated or stats.outOfOrder:
        raise SystemExit(f"bench: deliveries went wrong in {what}")
    return {"us": perRequest}


def delta(before: tuple[float, float], after: tuple[float, float]) -> tuple[float, float]:
    return after[0] - before[0], after[1] - before[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--publishes", type=int, default=5000, help="POST /events requests")
    p.add_argument("--batches", type=int, help="POST /batch_events requests (publishes / 10)")
    p.add_argument("--warmup", type=int, default=200, help="publishes before measuring")
    p.add_argument("--frame-bytes", type=int, default=100, help="size of a delivered frame")
    p.add_argument("--pushsvc-arg", action="append", help="extra twistd pushsvc option")
    p.add_argument("--profile", type=Path, metavar="DIR", help="py-spy stacks per phase in DIR")
    args = p.parse_args(argv)
    batches = args.batches if args.batches is not None else max(1, args.publishes // BATCH)
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {LOAD_CPU})
    work = Path(tempfile.mkdtemp(prefix="pushsvc-publish-cost-"))
    server: Server = startServer("pushsvc", work, args.frame_bytes, args.pushsvc_arg or [])
    gen = LoadGen(server.target)
    port = server.target.pubPort
    try:
        if gen.connect(1, time.monotonic() + 30) != 1:
            raise SystemExit(f"bench: the subscriber did not connect: {gen.closedCodes}")
        events = eventsRequest(port, args.frame_bytes)
        batch = batchRequest(port, args.frame_bytes)
        oneAtATime(gen, events, args.warmup, 1)  # code paths loaded, caches built
        oneAtATime(gen, batch, max(1, args.warmup // BATCH), BATCH)
        say(f"pushsvc pid {server.pid} on CPU 0, one subscriber; the load on CPU {LOAD_CPU}")
        spy = profiler(server, "events", args.profile)
        before = userSystem(server.pid)
        single = measured(server, gen, "events", lambda: oneAtATime(gen, events, args.publishes, 1))
        after = userSystem(server.pid)
        stopProfiler(spy)
        report(single, args.publishes, 1, "POST /events", delta(before, after))
        spy = profiler(server, "batch_events", args.profile)
        before = userSystem(server.pid)
        batched = measured(
            server, gen, "batch_events", lambda: oneAtATime(gen, batch, batches, BATCH)
        )
        after = userSystem(server.pid)
        stopProfiler(spy)
        report(
            batched, batches, BATCH, f"POST /batch_events ({BATCH} events)", delta(before, after)
        )
    finally:
        gen.closePublisher()
        gen.closeAll()
        server.stop()
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
