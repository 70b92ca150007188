"""
The pushsvc benchmark: pushsvc and its peers under the same load, one table.

    python bench/run.py            # the full run (a few minutes)
    python bench/run.py --quick    # small numbers, about a minute, for development

Each server runs pinned to CPU 0; this process (the publisher) pins itself to CPU 1, and so runs
its child wsload (the subscribers, see L{loadgen}). For each server, two fresh processes in turn:

  A. N subscribers (1,000): a steady phase (20 publishes/s), then a flood phase (at most 4
     publishes in flight: one is in flight until every subscriber got it).
  B. M subscribers (10,000, --mid): RSS per idle connection after a few idle seconds, then a flood.
  C. (pushsvc only unless --big-servers) as many idle subscribers as asked (--big, 100,000) and
     the fd hard limit allows: RSS per idle connection, the longest reactor stall over a keep-alive
     sweep, the longest GC pause while connecting.

pushsvc runs with an admin listener; its /metrics, read before and after each scenario, gives
the longest reactor stall and GC pause in it (see L{metricstext}). Each scenario's latency
samples are drawn as one CDF picture per scenario (see L{cdf}; needs matplotlib).

Server CPU per delivery is utime+stime of the server process (/proc/PID/stat) over a phase divided
by the deliveries in it; the load generator's ("loadgen µs/del") likewise, of the wsload process
(the publisher, this process, is not counted). pushsvc is started as ``twistd -n pushsvc`` and
published to through its signed HTTP API (``POST /apps/{id}/events``); each peer has a
``POST /publish`` that broadcasts the body. Every delivered frame is 100 bytes, no compression.
Results are printed and written to ``bench/results/<timestamp>.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import cdf  # noqa: E402
import metricstext  # noqa: E402
from loadgen import LoadGen, PhaseStats, Target, eventData, eventFrame  # noqa: E402

from pushsvc.apiauth import apiSignature  # noqa: E402

SERVER_CPU = 0
LOAD_CPU = 1
APP_ID, APP_KEY, APP_SECRET = "bench", "benchkey", "benchsecret-0123456789"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# pushsvc-norec: pushsvc again with --no-recording, so one run shows what recording costs.
ALL_SERVERS = ("pushsvc", "pushsvc-norec", "node-ws", "websockets", "autobahn")
# pushsvc-hooks (on request, --servers): pushsvc with a webhook receiver that accepts connections
# and never answers, so a run shows whether stuck webhooks cost the fan-out anything.
EXTRA_SERVERS = ("pushsvc-hooks",)
PUSHSVC_SERVERS = ("pushsvc", "pushsvc-norec", "pushsvc-hooks")
FD_SPARE = 200  # descriptors part C leaves to each process beyond its connections
NO_METRICS = "—"  # a peer: no /metrics to read


# -- processes -------------------------------------------------------------------------------


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpuSeconds(pid: int) -> float:
    """utime + stime of process C{pid} (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rssKiB(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    target: Target
    logPath: Path
    adminPort: int | None = None  # pushsvc's admin listener (/metrics); None for the peers

    def metrics(self) -> metricstext.Samples | None:
        """Its /metrics now (None: none to read, or the read failed, which is said)."""
        if self.adminPort is None:
            return None
        samples = metricstext.scrape(self.adminPort)
        if samples is None:
            say(f"  warning: {self.name} did not answer GET /metrics on port {self.adminPort}")
        return samples

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def waitListening(
    proc: subprocess.Popen[bytes], ports: list[int], logPath: Path, timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {proc.returncode}; see {logPath}:\n"
                    + logPath.read_text()[-3000:]
                )
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nothing listens on {port} after {timeout}s") from None
                time.sleep(0.1)


def twistd() -> list[str]:
    """The twistd of this Python (its script when installed beside it)."""
    script = Path(sys.executable).parent / "twistd"
    if script.is_file():
        return [sys.executable, str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def pinned(argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(SERVER_CPU), *argv]


def signedRequest(port: int, path: str, body: bytes) -> bytes:
    """A whole signed HTTP API POST of C{body} to C{path}, as the SDKs send it."""
    params = {
        "auth_key": APP_KEY,
        "auth_timestamp": str(int(time.time())),
        "auth_version": "1.0",
        "body_md5": hashlib.md5(body, usedforsecurity=False).hexdigest(),
    }
    params["auth_signature"] = apiSignature(APP_SECRET, "POST", path, params)
    return (
        f"POST {path}?{urlencode(params)} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def pusherRequest(port: int, frameBytes: int) -> Callable[[int, int], bytes]:
    path = f"/apps/{APP_ID}/events"

    def make(seq: int, sentNs: int) -> bytes:
        body = json.dumps(
            {"name": "m", "channel": "bench", "data": eventData(seq, sentNs, frameBytes)},
            separators=(",", ":"),
        ).encode()
        return signedRequest(port, path, body)

    return make


def peerRequest(port: int, frameBytes: int) -> Callable[[int, int], bytes]:
    def make(seq: int, sentNs: int) -> bytes:
        body = eventFrame(eventData(seq, sentNs, frameBytes)).encode()
        return (
            f"POST /publish HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    return make


_silent: list[socket.socket] = []


def silentReceiver() -> int:
    """
    A port that accepts TCP connections (the kernel completes them from the backlog) and never
    reads or answers: a webhook receiver that hangs. Kept open until this process ends.
    """
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4096)
    _silent.append(s)
    return int(s.getsockname()[1])


def startServer(name: str, work: Path, frameBytes: int, extra: list[str]) -> Server:
    logPath = work / f"{name}.log"
    log = open(logPath, "ab")  # noqa: SIM115 -- handed to the child
    env = dict(os.environ)
    adminPort = None
    if name in PUSHSVC_SERVERS:
        if name == "pushsvc-norec":
            extra = [*extra, "--no-recording"]
        if name == "pushsvc-hooks":
            extra = [*extra, "--webhook-url", f"http://127.0.0.1:{silentReceiver()}/hooks"]
        port, adminPort = freePort(), freePort()
        data = Path(tempfile.mkdtemp(prefix="data-", dir=work))
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(":")
        env["PUSHSVC_APP_SECRET"] = APP_SECRET
        argv = [
            *twistd(),
            "-n",
            "--pidfile=",
            f"--logfile={work / f'{name}-twistd.log'}",
            "pushsvc",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1:backlog=1024",
            "--data-dir",
            str(data),
            "--app-id",
            APP_ID,
            "--app-key",
            APP_KEY,
            # Every subscriber and the publisher come from 127.0.0.1: 10,000 of them would pass
            # the default cap per client address (1,000).
            "--max-connections-per-ip",
            "0",
            # /metrics: the reactor stall and GC pause figures (loopback needs no token)
            "--admin-listen",
            f"tcp:{adminPort}:interface=127.0.0.1",
            *extra,
        ]
        target = Target(
            name,
            port,
            f"/app/{APP_KEY}?protocol=7&client=bench&version=1",
            True,
            port,
            pusherRequest(port, frameBytes),
        )
        ports = [port, adminPort]
    elif name == "node-ws":
        port = freePort()
        argv = ["node", str(HERE / "node" / "server.js"), str(port)]
        target = Target(name, port, "/", False, port, peerRequest(port, frameBytes))
        ports = [port]
    elif name in ("websockets", "autobahn"):
        wsPort, httpPort = freePort(), freePort()
        argv = [sys.executable, str(HERE / "peers" / f"{name}_peer.py"), str(wsPort), str(httpPort)]
        target = Target(name, wsPort, "/", False, httpPort, peerRequest(httpPort, frameBytes))
        ports = [wsPort, httpPort]
    else:
        raise ValueError(name)
    proc = subprocess.Popen(
        pinned(argv), stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL
    )
    log.close()
    server = Server(name, proc, target, logPath, adminPort)
    try:
        waitListening(proc, ports, logPath)
    except BaseException:
        server.stop()
        raise
    return server


# -- phases ----------------------------------------------------------------------------------


@dataclass
class Phase:
    scenario: str
    subscribers: int
    stats: PhaseStats
    cpu: float  # server CPU seconds over the phase
    held: int
    loadCpu: float  # wsload (the subscribers) CPU seconds over the phase
    stall: str = "n/a"  # the longest reactor stall in the phase, ms (metricstext.longest)
    gcPause: str = "n/a"  # the longest GC pause in the phase, ms

    @property
    def deliveries(self) -> int:
        return self.stats.received

    @property
    def usPerDelivery(self) -> float:
        return self.cpu / self.deliveries * 1e6 if self.deliveries else float("nan")

    @property
    def loadUsPerDelivery(self) -> float:
        return self.loadCpu / self.deliveries * 1e6 if self.deliveries else float("nan")

    @property
    def rate(self) -> float:
        wall = self.stats.ended - self.stats.started
        return self.deliveries / wall if wall > 0 else 0.0

    def _ms(self, ns: int) -> float:
        return ns / 1e6 if self.stats.samples else float("nan")

    @property
    def p50(self) -> float:
        """Publish-to-receive latency in ms, median; p99 and max likewise."""
        return self._ms(self.stats.p50Ns)

    @property
    def p99(self) -> float:
        return self._ms(self.stats.p99Ns)

    @property
    def max(self) -> float:
        return self._ms(self.stats.maxNs)


@dataclass
class Result:
    server: str
    phases: dict[str, Phase] = field(default_factory=dict)
    rssPerConn: float = float("nan")
    idleHeld: int = 0
    idleWanted: int = 0
    closeCodes: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    big: Big | None = None  # part C
    bigError: str | None = None


@dataclass
class Big:
    """Part C: many idle connections."""

    asked: int
    allowed: int  # what the fd hard limit allows (asked, at most)
    hard: int  # the fd hard limit
    held: int = 0
    connectSeconds: float = 0.0
    rssPerConn: float = float("nan")
    idleSeconds: float = 0.0
    pings: int = 0  # server pings the subscribers answered while idle
    pinged: int = 0  # subscribers that answered at least one ping (all: a whole keep-alive round)
    stallIdle: str = "n/a"  # the longest reactor stall while idle, ms
    gcConnect: str = "n/a"  # the longest GC pause while connecting, ms
    stallConnect: str = "n/a"
    scrapeStall: str = "n/a"  # the stall one /metrics read itself caused (counted in a phase)


def profiler(server: Server, scenario: str, profile: Path | None) -> subprocess.Popen[bytes] | None:
    """py-spy sampling C{server} (Python servers only) into C{profile}/<server>-<scenario>.txt."""
    if profile is None or server.name in ("node-ws",):
        return None
    pyspy = shutil.which("py-spy")
    if pyspy is None:
        raise SystemExit("bench: --profile needs py-spy (pip install py-spy)")
    profile.mkdir(parents=True, exist_ok=True)
    out = profile / f"{server.name}-{scenario.replace(' ', '-').replace('/', '')}.txt"
    proc = subprocess.Popen(
        [
            pyspy,
            "record",
            "--format",
            "raw",
            "--rate",
            "250",
            "--nonblocking",
            "--output",
            str(out),
            "--pid",
            str(server.pid),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # py-spy attaches
    return proc


def measured(
    server: Server,
    gen: LoadGen,
    scenario: str,
    run: Callable[[], PhaseStats],
    profile: Path | None = None,
    samples: Path | None = None,
) -> Phase:
    spy = profiler(server, scenario, profile)
    if samples is not None:
        samples.mkdir(parents=True, exist_ok=True)
        gen.samplesTo = samples / f"{server.name}-{slug(scenario)}.bin"
    metricsBefore = server.metrics()
    before = cpuSeconds(server.pid)
    loadBefore = cpuSeconds(gen.wsloadPid)
    stats = run()
    cpu = cpuSeconds(server.pid) - before
    loadCpu = cpuSeconds(gen.wsloadPid) - loadBefore
    metricsAfter = server.metrics()
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
    phase = Phase(scenario, stats.subscribers, stats, cpu, gen.ready, loadCpu)
    phase.stall, phase.gcPause = figures(server, metricsBefore, metricsAfter)
    say(
        f"  {scenario}: {phase.deliveries} deliveries, {phase.usPerDelivery:.2f} us/delivery, "
        f"{phase.rate:,.0f}/s, p50 {phase.p50:.2f} ms, p99 {phase.p99:.2f} ms, "
        f"lost {stats.lost()}, dup {stats.duplicated}, reordered {stats.outOfOrder}, "
        f"publish errors {stats.publishErrors}, loadgen {phase.loadUsPerDelivery:.2f} us/del, "
        f"longest stall {phase.stall} ms, GC pause {phase.gcPause} ms"
    )
    return phase


def slug(scenario: str) -> str:
    """A scenario's name as part of a file name: "1000 steady 20/s" -> "1000-steady-20s"."""
    return "-".join(scenario.replace("/", "").split())


def figures(
    server: Server, before: metricstext.Samples | None, after: metricstext.Samples | None
) -> tuple[str, str]:
    """(longest reactor stall, longest GC pause) between two /metrics reads, ms as text."""
    if server.adminPort is None:
        return NO_METRICS, NO_METRICS
    return (
        metricstext.longest(before, after, metricstext.STALL),
        metricstext.longest(before, after, metricstext.GC_PAUSE),
    )


@contextmanager
def running(
    name: str,
    args: argparse.Namespace,
    work: Path,
    result: Result,
    part: str,
    extra: list[str] | None = None,
    perAddress: int = 25000,
) -> Iterator[tuple[Server, LoadGen]]:
    """A fresh server and load generator for one part; their close codes go into C{result}."""
    server = startServer(name, work, args.frame_bytes, [*(args.pushsvc_arg or []), *(extra or [])])
    gen = LoadGen(server.target, perAddress)
    try:
        yield server, gen
        for code, n in gen.closedCodes.items():
            result.closeCodes[f"{part}:{code}"] = n
    finally:
        gen.closePublisher()
        gen.closeAll()
        server.stop()


def flooded(server: Server, gen: LoadGen, subscribers: int, args: argparse.Namespace) -> Phase:
    return measured(
        server,
        gen,
        f"{subscribers} flood",
        lambda: gen.flood(args.window, args.flood_seconds, args.max_publishes),
        args.profile,
        args.samples,
    )


def benchServer(name: str, args: argparse.Namespace, work: Path) -> Result:
    result = Result(name)
    if "A" in args.parts:
        partA(name, args, work, result)
    if "B" in args.parts:
        partB(name, args, work, result)
    # C: many idle connections
    if "C" in args.parts and name in args.big_servers and args.big > 0:
        try:
            result.big = benchBig(name, args, work, result)
        except Exception as e:  # A and B stand
            say(f"{name}: part C failed: {e!r}")
            result.bigError = repr(e)[:200]
    return result


def partA(name: str, args: argparse.Namespace, work: Path, result: Result) -> None:
    """Steady and flood with the smaller number of subscribers."""
    with running(name, args, work, result, "A") as (server, gen):
        say(f"{name}: pid {server.pid}, connecting {args.subs}")
        held = gen.connect(args.subs, time.monotonic() + 120)
        if held < args.subs:
            say(f"  only {held} of {args.subs} connected: {gen.closedCodes}")
        gen.idle(1.0)
        result.phases["steady"] = measured(
            server,
            gen,
            f"{args.subs} steady {args.rate:g}/s",
            lambda: gen.steady(args.rate, args.steady_seconds),
            args.profile,
            args.samples,
        )
        result.phases["flood"] = flooded(server, gen, args.subs, args)


def partB(name: str, args: argparse.Namespace, work: Path, result: Result) -> None:
    """Memory per idle connection, then a flood, with the larger number."""
    with running(name, args, work, result, "B") as (server, gen):
        gen.connect(20, time.monotonic() + 30)  # warm-up: code paths loaded, caches built
        gen.idle(0.5)
        gen.closeAll()
        gen.idle(1.0)
        base = rssKiB(server.pid)
        say(f"{name}: pid {server.pid}, RSS {base} KiB, connecting {args.mid}")
        t0 = time.monotonic()
        held = gen.connect(args.mid, time.monotonic() + 300)
        say(f"  {held} connected in {time.monotonic() - t0:.1f}s")
        gen.idle(args.idle_seconds)
        full = rssKiB(server.pid)
        result.idleHeld, result.idleWanted = gen.ready, args.mid
        result.rssPerConn = (full - base) / max(1, gen.ready)
        say(f"  RSS {full} KiB: {result.rssPerConn:.2f} KiB per idle connection")
        result.phases["bigflood"] = flooded(server, gen, args.mid, args)


def fdAllowance(asked: int) -> tuple[int, int]:
    """
    (connections part C may open, the fd hard limit): C{asked}, at most the hard limit less
    L{FD_SPARE}. The server and wsload are children of this process and inherit its hard limit,
    which an unprivileged process cannot raise; each holds one descriptor per connection.
    """
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return asked, hard
    return max(0, min(asked, hard - FD_SPARE)), hard


def benchBig(name: str, args: argparse.Namespace, work: Path, result: Result) -> Big:
    """
    Part C: C{args.big} idle subscribed connections (as many as the fd hard limit allows), RSS
    per idle connection as part B measures it, the longest GC pause while connecting and the
    longest reactor stall while idle over a whole keep-alive round: until every connection has
    answered a server ping (pushsvc pings connections silent for 30 s), at least
    C{args.big_idle_seconds} and at most C{args.big_idle_max}. pushsvc runs with
    C{--activity-timeout} C{args.big_activity_timeout} (told to clients; wsload does not ping)
    and C{--max-connections} a little above the count (its default, derived from the fd limit,
    keeps a reserve for refusals).
    """
    allowed, hard = fdAllowance(args.big)
    limit = "unlimited" if hard == resource.RLIM_INFINITY else f"{hard:,}"
    if allowed < args.big:
        say(f"part C: asked {args.big:,}, the fd hard limit {limit} allows {allowed:,}")
    else:
        say(f"part C: {allowed:,} connections (the fd hard limit is {limit})")
    big = Big(args.big, allowed, hard)
    extra = (
        [
            "--activity-timeout",
            str(args.big_activity_timeout),
            "--max-connections",
            str(allowed + 16),
        ]
        if name in PUSHSVC_SERVERS
        else []
    )
    with running(name, args, work, result, "C", extra, args.big_per_address) as (server, gen):
        gen.connect(20, time.monotonic() + 30)  # warm-up, as in B
        gen.idle(0.5)
        gen.closeAll()
        gen.idle(1.0)
        base = rssKiB(server.pid)
        beforeConnect = server.metrics()
        say(f"{name}: pid {server.pid}, RSS {base} KiB, connecting {allowed:,} (C)")
        t0 = time.monotonic()
        connectTimeout = min(900.0, max(60.0, allowed / 50))
        big.held = gen.connect(allowed, t0 + connectTimeout, args.big_concurrency)
        big.connectSeconds = time.monotonic() - t0
        afterConnect = server.metrics()
        big.stallConnect, big.gcConnect = figures(server, beforeConnect, afterConnect)
        # One /metrics read is a reactor iteration too, counted in the next read's figures (the
        # server answers that one in a later iteration): a second read at once measures the
        # first one's, and the idle window, which the second one opens, leaves one such out.
        opened = server.metrics()
        big.scrapeStall = figures(server, afterConnect, opened)[0]
        readStall = metricstext.grown(afterConnect, opened, metricstext.STALL[0])
        pings = gen.pings
        gen.resetPinged()  # so every connection answers a ping within the idle time
        # a peer that never pings idles the least; pushsvc until all were pinged (or the most)
        pinging = name in PUSHSVC_SERVERS
        say(
            f"  {big.held:,} connected in {big.connectSeconds:.1f}s; longest GC pause "
            f"{big.gcConnect} ms, stall {big.stallConnect} ms; idle "
            + (
                f"until every connection answered a ping ({args.big_idle_seconds:g}-"
                f"{args.big_idle_max:g}s)"
                if pinging
                else f"{args.big_idle_seconds:g}s"
            )
        )
        t1 = time.monotonic()
        while True:
            waited = time.monotonic() - t1
            if waited >= args.big_idle_max:
                break
            if waited >= args.big_idle_seconds and (not pinging or gen.pinged >= gen.ready):
                break
            gen.idle(min(2.0, args.big_idle_max - waited))
        big.idleSeconds = time.monotonic() - t1
        big.pinged = gen.pinged
        afterIdle = server.metrics()
        big.stallIdle = (
            metricstext.longest(opened, afterIdle, metricstext.STALL, less=readStall)
            if server.adminPort is not None
            else figures(server, opened, afterIdle)[0]
        )
        spread = metricstext.grown(opened, afterIdle, metricstext.STALL[0])
        say(
            "  stalls of 1 ms or more while idle, by bucket (ms: count): "
            + (", ".join(f"<{b * 1000:g}: {n:g}" for b, n in spread.items()) or "none")
        )
        big.pings = gen.pings - pings
        full = rssKiB(server.pid)
        big.held = gen.ready
        big.rssPerConn = (full - base) / max(1, gen.ready)
        say(
            f"  held {big.held:,}, idle {big.idleSeconds:.0f}s, {big.pings:,} pings answered by "
            f"{big.pinged:,} connections; RSS {full} KiB: "
            f"{big.rssPerConn:.2f} KiB per idle connection; longest stall idle {big.stallIdle} ms"
            f" (one /metrics read: {big.scrapeStall} ms)"
        )
    return big


# -- output ----------------------------------------------------------------------------------


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def fmt(x: float, digits: int = 1) -> str:
    return "-" if x != x else f"{x:.{digits}f}"


def tables(results: list[Result], args: argparse.Namespace) -> str:
    s, b = args.subs, args.mid
    lines = [
        f"| server | µs/delivery, {s:,} subs at {args.rate:g}/s | µs/delivery, {s:,} subs flooded"
        f" | µs/delivery, {b:,} subs flooded | RSS KiB per idle connection ({b:,})"
        f" | p99 ms at {s:,} subs, {args.rate:g}/s | connections held ({b:,})"
        f" | longest stall ms, {b:,} subs flooded |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.error:
            lines.append(f"| {r.server} | failed: {r.error} | | | | | | |")
            continue
        p = r.phases
        if not {"steady", "flood", "bigflood"} <= p.keys():
            continue  # a run of some parts only: the per-scenario table has what ran
        lines.append(
            f"| {r.server} | {fmt(p['steady'].usPerDelivery)} | {fmt(p['flood'].usPerDelivery)}"
            f" | {fmt(p['bigflood'].usPerDelivery)} | {fmt(r.rssPerConn)}"
            f" | {fmt(p['steady'].p99)} | {r.idleHeld:,}/{r.idleWanted:,}"
            f" | {p['bigflood'].stall} |"
        )
    lines += [
        "",
        "| server | scenario | publishes | deliveries | server CPU s | µs/delivery"
        " | loadgen µs/del | deliveries/s | p50 ms | p99 ms | max ms | longest stall ms"
        " | longest GC pause ms | lost | duplicated | out of order | held |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for ph in r.phases.values():
            st = ph.stats
            lines.append(
                f"| {r.server} | {ph.scenario} | {st.published:,} | {ph.deliveries:,}"
                f" | {ph.cpu:.2f} | {fmt(ph.usPerDelivery, 2)}"
                f" | {fmt(ph.loadUsPerDelivery, 2)} | {ph.rate:,.0f}"
                f" | {fmt(ph.p50, 2)} | {fmt(ph.p99, 2)}"
                f" | {fmt(ph.max, 2)} | {ph.stall} | {ph.gcPause} | {st.lost():,}"
                f" | {st.duplicated:,} | {st.outOfOrder:,} | {ph.held:,}/{ph.subscribers:,} |"
            )
    bigs = [r for r in results if r.big is not None or r.bigError is not None]
    if bigs:
        allowed = [f"{r.server} {r.big.allowed:,}" for r in bigs if r.big is not None]
        hard = next((r.big.hard for r in bigs if r.big is not None), None)
        limit = (
            f"; the fd hard limit {hard:,} allows {', '.join(allowed)}"
            if hard is not None and hard != resource.RLIM_INFINITY
            else ""
        )
        lines += [
            "",
            f"Part C, many idle connections: asked {args.big:,}{limit}; the keep-alive sweep: "
            f"pushsvc started with `--activity-timeout {args.big_activity_timeout}` for this part "
            "only and left idle until every connection answered a ping (it pings connections "
            f"silent for 30 s; at least {args.big_idle_seconds:g} s, at most "
            f"{args.big_idle_max:g} s), so the stall column covers a whole keep-alive round; "
            "the GC column covers the connecting. A `/metrics` read's own stall is counted in "
            "the figure that follows it: measured with all connections open (last column), and "
            "left out of the idle figure (the read that opens the idle time).",
            "",
            "| server | connections held | connect s | RSS KiB per idle connection"
            " | longest GC pause ms, connecting | longest stall ms, idle (keep-alive round)"
            " | idle s | connections pinged | stall of one /metrics read ms, all open |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in bigs:
            g = r.big
            if g is None:
                lines.append(f"| {r.server} | failed: {r.bigError} | | | | | | | |")
                continue
            capped = f" (asked {g.asked:,}, fd limit)" if g.allowed < g.asked else ""
            lines.append(
                f"| {r.server} | {g.held:,}/{g.allowed:,}{capped} | {g.connectSeconds:.1f}"
                f" | {fmt(g.rssPerConn, 2)} | {g.gcConnect} | {g.stallIdle}"
                f" | {g.idleSeconds:.0f} | {g.pinged:,} | {g.scrapeStall} |"
            )
    closes = {r.server: r.closeCodes for r in results if r.closeCodes}
    if closes:
        lines += ["", f"Connections closed during the run (phase:code -> count): {closes}"]
    return "\n".join(lines)


def environment() -> str:
    def version(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return "?"

    from importlib.metadata import version as pkg

    node = version(["node", "--version"])
    wsPackage = HERE / "node" / "node_modules" / "ws" / "package.json"
    # not installed when no run asked for node-ws
    ws = json.loads(wsPackage.read_text()) if wsPackage.is_file() else {"version": "?"}
    return (
        f"Python {platform.python_version()}, Twisted {pkg('twisted')}, Autobahn "
        f"{pkg('autobahn')}, websockets {pkg('websockets')}, Node {node}, ws {ws['version']};"
        f" {os.cpu_count()} CPUs, kernel {platform.release()}"
    )


def ensureNode() -> None:
    if (HERE / "node" / "node_modules" / "ws").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("bench: npm is needed for the Node ws peer (or pass --servers)")
    say("installing the Node peer's packages (npm ci)")
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--silent"], cwd=HERE / "node", check=True
    )


def raiseFileLimit(need: int) -> None:
    """The soft fd limit up to the hard one (the children inherit it); warn below C{need}."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY and hard < need:
        say(f"warning: only {hard} file descriptors allowed; {need} wanted")


def pictures(results: list[Result], args: argparse.Namespace, out: Path) -> list[str]:
    """
    One latency CDF PNG per scenario beside C{out} (<stem>-<scenario>.png), every server of the
    run a line on it; @return: the markdown lines linking them (or saying why there are none).
    """
    why = cdf.missing()
    if why is not None:
        say(f"no latency pictures: matplotlib is missing ({why})")
        return [f"No latency pictures: matplotlib is missing ({why})."]
    titles = {
        "steady": f"{args.subs:,} subscribers, {args.rate:g} publishes/s",
        "flood": f"{args.subs:,} subscribers flooded (window {args.window})",
        "bigflood": f"{args.mid:,} subscribers flooded (window {args.window})",
    }
    lines = []
    for key, title in titles.items():
        series: list[tuple[str, Path]] = []
        scenario = ""
        for r in results:
            phase = r.phases.get(key)
            if phase is not None and phase.stats.samplesPath is not None:
                series.append((r.server, phase.stats.samplesPath))
                scenario = phase.scenario
        png = out.with_name(f"{out.stem}-{slug(scenario)}.png")
        if series and cdf.draw(png, title, series):
            lines.append(f"![latency CDF, {title}]({png.name})")
            say(f"latency picture {png}")
    return lines


def parseArgs(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small numbers, for development")
    p.add_argument(
        "--servers",
        default=",".join(ALL_SERVERS),
        help=f"comma-separated, from {', '.join(ALL_SERVERS)}",
    )
    p.add_argument("--subs", type=int, help="subscribers of the steady and first flood phase")
    p.add_argument("--mid", type=int, help="subscribers of part B (memory, second flood)")
    p.add_argument(
        "--big",
        type=int,
        help="idle connections of part C (default 100,000; clamped to the fd hard limit less "
        f"{FD_SPARE}); 0: no part C",
    )
    p.add_argument(
        "--parts",
        default="ABC",
        help="the parts to run: A (steady, flood), B (memory, flood), C (many idle); e.g. C",
    )
    p.add_argument(
        "--big-servers",
        default="pushsvc",
        help="comma-separated servers (of --servers) that run part C; none: no part C",
    )
    p.add_argument(
        "--big-idle-seconds",
        type=float,
        default=35.0,
        help="part C's least idle time (pushsvc pings a connection silent for 30 s)",
    )
    p.add_argument(
        "--big-idle-max",
        type=float,
        default=120.0,
        help="part C's most idle time, waiting for every connection to answer a ping",
    )
    p.add_argument("--big-activity-timeout", type=int, default=10, help="pushsvc's, in part C")
    p.add_argument(
        "--big-per-address", type=int, default=25000, help="subscribers per 127.0.0.x (part C)"
    )
    p.add_argument("--big-concurrency", type=int, default=64, help="handshakes at a time (C)")
    p.add_argument("--rate", type=float, default=20.0, help="publishes/s of the steady phase")
    p.add_argument("--steady-seconds", type=float)
    p.add_argument("--flood-seconds", type=float)
    p.add_argument("--idle-seconds", type=float)
    p.add_argument("--window", type=int, default=4, help="publishes in flight in a flood")
    p.add_argument("--max-publishes", type=int, default=100000)
    p.add_argument("--frame-bytes", type=int, default=100, help="size of a delivered frame")
    p.add_argument("--pushsvc-arg", action="append", help="extra twistd pushsvc option")
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample the Python servers with py-spy during each phase (collapsed "
        "stacks in DIR; the figures of such a run are not comparable)",
    )
    p.add_argument("--out", type=Path, help="results file (default bench/results/<time>.md)")
    args = p.parse_args(argv)
    quick = args.quick
    defaults = {
        "subs": (100, 1000),
        "mid": (1000, 10000),
        "big": (1000, 100000),
        "steady_seconds": (3.0, 20.0),
        "flood_seconds": (3.0, 10.0),
        "idle_seconds": (1.0, 3.0),
    }
    for key, (small, full) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, small if quick else full)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    for s in args.servers:
        if s not in ALL_SERVERS + EXTRA_SERVERS:
            p.error(f"unknown server {s!r}")
    args.big_servers = [
        s.strip() for s in args.big_servers.split(",") if s.strip() and s.strip() != "none"
    ]
    for s in args.big_servers:
        if s not in ALL_SERVERS + EXTRA_SERVERS:
            p.error(f"unknown server {s!r} in --big-servers")
    if args.big < 0 or args.big_per_address <= 0 or args.big_concurrency <= 0:
        p.error("--big must be >= 0, --big-per-address and --big-concurrency > 0")
    args.samples = None  # the directory of the latency samples, set by main
    return args


def main(argv: list[str] | None = None) -> int:
    args = parseArgs(argv)
    if os.cpu_count() and os.cpu_count() >= 2:  # type: ignore[operator]
        os.sched_setaffinity(0, {LOAD_CPU})
    raiseFileLimit(args.mid + 1000)
    if "node-ws" in args.servers:
        ensureNode()
    work = Path(tempfile.mkdtemp(prefix="pushsvc-bench-"))
    try:
        return runAll(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def runAll(args: argparse.Namespace, work: Path) -> int:
    args.samples = work / "samples"
    say(f"work directory {work}; servers on CPU {SERVER_CPU}, load on CPU {LOAD_CPU}")
    results = []
    for name in args.servers:
        try:
            results.append(benchServer(name, args, work))
        except Exception as e:  # one server failing still gives the others' figures
            say(f"{name} failed: {e!r}")
            results.append(Result(name, error=repr(e)[:200]))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    text = (
        f"# pushsvc benchmark {stamp}{' (quick)' if args.quick else ''}\n\n"
        f"{environment()}\n\n"
        f"Frames of {args.frame_bytes} bytes; flood window {args.window}; steady "
        f"{args.steady_seconds:g}s, floods {args.flood_seconds:g}s each.\n\n"
        + tables(results, args)
        + "\n"
    )
    out = args.out or HERE / "results" / f"{stamp}{'-quick' if args.quick else ''}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    links = pictures(results, args, out)
    if links:
        text += "\nLatency, publish to receive, every delivery of the scenario:\n\n"
        text += "\n\n".join(links) + "\n"
    out.write_text(text)
    say("\n" + text)
    say(f"written to {out}")
    return 0 if not any(r.error or r.bigError for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
