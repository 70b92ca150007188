"""
The benchmark's own arithmetic: the latency quantiles its subscriber program (bench/wsload.c)
reports are those of the samples sorted, and it spreads its connections over source addresses;
the stall and GC figures run.py reads from /metrics (bench/metricstext.py); part C's fd clamp;
the abuse script (bench/abuse.py) signs as the server checks and prints a table that stays a
table.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import requireService
from tests.test_apiauth import BODY, KEY, PATH, SECRET, TIMESTAMP

BENCH = Path(__file__).resolve().parent.parent / "bench"
WSLOAD = BENCH / "wsload.c"


def loadBench(name: str) -> Any:
    """bench/<name>.py as a module (bench/ is not a package), imported once."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def loadAbuse() -> Any:
    return loadBench("abuse")


@contextmanager
def wsloadProcess(binary: Path, port: int, *extra: str) -> Iterator[subprocess.Popen[str]]:
    """wsload against 127.0.0.1:C{port} (plain WebSocket), driven over its stdin and stdout."""
    proc = subprocess.Popen(
        [str(binary), "127.0.0.1", str(port), "/", "plain", *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.stdin.close()
        proc.stdout.close()


def buildWsload(tmp: str) -> Path:
    """wsload compiled into C{tmp} (a missing compiler skips, or fails in CI)."""
    cc = shlex.split(os.environ.get("CC") or "cc")
    if shutil.which(cc[0]) is None:
        requireService("A C compiler", f"({cc[0]!r}, or $CC) is missing: it builds wsload")
    binary = Path(tmp) / "wsload"
    built = subprocess.run(
        [*cc, "-O2", "-o", str(binary), str(WSLOAD)], capture_output=True, text=True, timeout=120
    )
    assert built.returncode == 0, built.stderr
    return binary


class WsloadQuantileTests(SynchronousTestCase):
    def test_quantilesAreThoseOfTheSortedSamples(self) -> None:
        """
        wsload's p50, p99 and max equal sorted[int(q * n)] (and the largest sample) for
        distinct, repeated and ascending samples (its selftest); a p99 read after the median
        was selected over a range that held it was once reported instead.
        """
        with tempfile.TemporaryDirectory() as tmp:
            binary = buildWsload(tmp)
            ran = subprocess.run(
                [str(binary), "selftest"], capture_output=True, text=True, timeout=60
            )
        self.assertEqual((ran.returncode, ran.stdout.strip()), (0, "selftest ok"))

    def test_connectionsSpreadOverSourceAddresses(self) -> None:
        """
        With PER_ADDRESS 2, wsload's 5 connections come from 127.0.0.1, .1, .2, .2 and .3 (so
        one load generator can open more connections to one port than one address has
        ephemeral ports), and a `dump` of a phase with no events writes an empty file.
        """
        with tempfile.TemporaryDirectory() as tmp, socket.socket() as listener:
            binary = buildWsload(tmp)
            listener.bind(("127.0.0.1", 0))
            listener.listen(16)
            listener.settimeout(10)
            port = listener.getsockname()[1]
            with wsloadProcess(binary, port, "2") as proc:
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write("connect 5 10 1\n")
                proc.stdin.flush()
                sources = []
                for _ in range(5):  # one at a time (concurrency 1): closing lets the next go
                    conn, (host, _port) = listener.accept()
                    sources.append(host)
                    conn.close()
                connected = proc.stdout.readline().split()
                dumped = Path(tmp) / "samples.bin"
                proc.stdin.write(f"phase 0\ndump {dumped}\npingreset\n")
                proc.stdin.flush()
                phase, dump = proc.stdout.readline().split(), proc.stdout.readline().split()
                pingreset = proc.stdout.readline().split()
                proc.stdin.write("quit\n")
                proc.stdin.flush()
                self.assertEqual(proc.wait(10), 0)
                size = dumped.stat().st_size
        self.assertEqual(sources, ["127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.2", "127.0.0.3"])
        self.assertEqual(connected[:5], ["connected", "ready", "0", "closed", "5"])
        self.assertEqual((phase[0], dump[:3], size), ("phase", ["dumped", "samples", "0"], 0))
        self.assertEqual((pingreset[0], pingreset[-2:]), ("pingreset", ["pinged", "0"]))

    def test_pingsAnsweredAreCounted(self) -> None:
        """
        A server ping is answered with a masked pong carrying its payload and counted (pings,
        and pinged: subscribers that answered one); pingreset counts the pinged afresh.
        """
        with tempfile.TemporaryDirectory() as tmp, socket.socket() as listener:
            binary = buildWsload(tmp)
            listener.bind(("127.0.0.1", 0))
            listener.listen(4)
            listener.settimeout(10)
            with wsloadProcess(binary, listener.getsockname()[1]) as proc:
                assert proc.stdin is not None and proc.stdout is not None

                def command(line: str) -> dict[str, str]:
                    assert proc.stdin is not None and proc.stdout is not None
                    proc.stdin.write(line + "\n")
                    proc.stdin.flush()
                    words = proc.stdout.readline().split()
                    return dict(zip(words[1::2], words[2::2], strict=True))

                proc.stdin.write("connect 1 10 1\n")
                proc.stdin.flush()
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(10)
                    request = b""
                    while b"\r\n\r\n" not in request:
                        request += conn.recv(4096)
                    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\n\r\n\x81\x02ok")
                    connected = proc.stdout.readline().split()
                    conn.sendall(b"\x89\x01x")  # ping "x"
                    pong = b""
                    while len(pong) < 7:
                        pong += conn.recv(64)
                    status = command("status")
                    reset = command("pingreset")
                    command("quit")
                self.assertEqual(proc.wait(10), 0)
        self.assertEqual(connected[:3], ["connected", "ready", "1"])
        self.assertEqual(pong[:2], b"\x8a\x81")
        self.assertEqual(bytes([pong[6] ^ pong[2]]), b"x")  # unmasked with the first key byte
        self.assertEqual((status["pings"], status["pinged"]), ("1", "1"))
        self.assertEqual((reset["pings"], reset["pinged"]), ("1", "0"))


FAKE_METRICS = """\
# HELP pushsvc_reactor_stall_seconds Reactor iterations busy for 1 ms or more.
# TYPE pushsvc_reactor_stall_seconds histogram
pushsvc_reactor_stall_seconds_bucket{{le="0.001"}} 0.0
pushsvc_reactor_stall_seconds_bucket{{le="0.002"}} {s2}
pushsvc_reactor_stall_seconds_bucket{{le="0.005"}} {s5}
pushsvc_reactor_stall_seconds_bucket{{le="0.0075"}} {s75}
pushsvc_reactor_stall_seconds_bucket{{le="5.0"}} {s75}
pushsvc_reactor_stall_seconds_bucket{{le="+Inf"}} {sInf}
pushsvc_reactor_stall_seconds_count {sInf}
pushsvc_reactor_stall_seconds_sum 0.5
# TYPE pushsvc_reactor_stall_longest_seconds gauge
pushsvc_reactor_stall_longest_seconds {longest}
# TYPE pushsvc_gc_pause_seconds histogram
pushsvc_gc_pause_seconds_bucket{{generation="0",le="0.001"}} {g0}
pushsvc_gc_pause_seconds_bucket{{generation="0",le="0.01"}} {g0}
pushsvc_gc_pause_seconds_bucket{{generation="0",le="+Inf"}} {g0}
pushsvc_gc_pause_seconds_bucket{{generation="2",le="0.001"}} 0.0
pushsvc_gc_pause_seconds_bucket{{generation="2",le="0.01"}} {g2}
pushsvc_gc_pause_seconds_bucket{{generation="2",le="+Inf"}} {g2}
pushsvc_gc_pause_longest_seconds 0.02
process_open_fds{{note="a \\"quoted\\" label"}} 12.0 1700000000000
"""


def fakeMetrics(**values: float) -> str:
    base = {"s2": 1, "s5": 1, "s75": 1, "sInf": 1, "longest": 0.0015, "g0": 5, "g2": 1}
    return FAKE_METRICS.format(**(base | values))


class MetricsFiguresTests(SynchronousTestCase):
    """run.py's "longest stall" and "longest GC pause" of a scenario, from two /metrics reads."""

    def setUp(self) -> None:
        self.m = loadBench("metricstext")

    def longest(self, before: str | None, after: str | None, which: str = "STALL") -> str:
        parse = self.m.parseMetrics
        result = self.m.longest(
            None if before is None else parse(before),
            None if after is None else parse(after),
            getattr(self.m, which),
        )
        assert isinstance(result, str)
        return result

    def test_parse(self) -> None:
        """Labels (escaped quotes too), +Inf, timestamps; comments are skipped."""
        samples = self.m.parseMetrics(fakeMetrics())
        self.assertEqual(samples[("process_open_fds", (("note", 'a "quoted" label'),))], 12.0)
        self.assertEqual(samples[("pushsvc_reactor_stall_seconds_bucket", (("le", "+Inf"),))], 1)
        self.assertEqual(samples[("pushsvc_reactor_stall_longest_seconds", ())], 0.0015)
        self.assertNotIn("#", "".join(name for name, _ in samples))

    def test_gaugeRose(self) -> None:
        """The longest-since-start gauge rose during the scenario: its new value is the figure."""
        after = fakeMetrics(s2=1, s5=1, s75=2, sInf=3, longest=0.0123)
        self.assertEqual(self.longest(fakeMetrics(), after), "12.3")

    def test_highestBucketThatGrew(self) -> None:
        """
        The gauge did not rise: "< the upper bound of the highest bucket that grew", reading
        each bucket's own count (the cumulative +Inf bucket grows with every stall).
        """
        before = fakeMetrics(longest=0.05)
        after = fakeMetrics(s2=2, s5=3, s75=3, sInf=3, longest=0.05)  # one <= 2 ms, one 2-5 ms
        self.assertEqual(self.longest(before, after), "< 5")
        after = fakeMetrics(s2=2, s5=2, s75=2, sInf=2, longest=0.05)  # one <= 2 ms
        self.assertEqual(self.longest(before, after), "< 2")
        after = fakeMetrics(s2=1, s5=1, s75=1, sInf=2, longest=0.05)  # one above the last bound
        self.assertEqual(self.longest(before, after), "> 5000")

    def test_lessTheReadThatOpenedTheWindow(self) -> None:
        """
        C{less} leaves observations out, by bucket: the highest bucket left is the figure, and
        the gauge counts only if its value falls in that bucket.
        """
        parse, m = self.m.parseMetrics, self.m
        before = parse(fakeMetrics(longest=0.05))
        after = parse(fakeMetrics(s2=3, s5=4, s75=4, sInf=4, longest=0.05))  # 2 <= 2 ms, 1 2-5
        self.assertEqual(m.longest(before, after, m.STALL, less={0.005: 1.0}), "< 2")
        self.assertEqual(m.longest(before, after, m.STALL, less={0.0075: 1.0}), "< 5")
        # the new longest (4 ms) is the one left out: not the figure
        after = parse(fakeMetrics(s2=1, s5=2, s75=2, sInf=2, longest=0.004))
        self.assertEqual(m.longest(parse(fakeMetrics()), after, m.STALL, less={0.005: 1}), "< 1")
        self.assertEqual(m.longest(parse(fakeMetrics()), after, m.STALL, less={0.002: 1}), "4.0")

    def test_nothingGrew(self) -> None:
        """No iteration of 1 ms or more in the scenario: "< 1"."""
        self.assertEqual(self.longest(fakeMetrics(), fakeMetrics()), "< 1")

    def test_gcPausesSummedOverGenerations(self) -> None:
        """GC pauses: the histogram's generations together; the highest bucket that grew."""
        before = fakeMetrics()
        self.assertEqual(self.longest(before, fakeMetrics(g0=9), "GC_PAUSE"), "< 1")
        self.assertEqual(self.longest(before, fakeMetrics(g0=9, g2=2), "GC_PAUSE"), "< 10")
        self.assertEqual(self.longest(before, before, "GC_PAUSE"), "< 1")

    def test_absent(self) -> None:
        """A server without the metrics (or a failed read) gives "n/a"."""
        other = "# TYPE process_open_fds gauge\nprocess_open_fds 12.0\n"
        self.assertEqual(self.longest(other, other), "n/a")
        self.assertEqual(self.longest(other, other, "GC_PAUSE"), "n/a")
        self.assertEqual(self.longest(None, fakeMetrics()), "n/a")


class MetricsScrapeTests(SynchronousTestCase):
    def test_scrapeReadsTheAdminListener(self) -> None:
        """
        scrape() GETs /metrics from 127.0.0.1:port and parses it; a failed read (nothing
        listening, or not 200) is None, which the figures show as "n/a".
        """
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        body = fakeMetrics(longest=0.0042).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                ok = self.path == "/metrics"
                self.send_response(200 if ok else 404)
                self.send_header("Content-Length", str(len(body) if ok else 0))
                self.end_headers()
                if ok:
                    self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        m = loadBench("metricstext")
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            samples = m.scrape(server.server_address[1], timeout=10)
        finally:
            server.shutdown()
            server.server_close()
            thread.join(10)
        self.assertEqual(samples[("pushsvc_reactor_stall_longest_seconds", ())], 0.0042)
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))  # bound, not listening: the connection is refused
            self.assertIsNone(m.scrape(unused.getsockname()[1], timeout=10))


class PartCTests(SynchronousTestCase):
    def test_clampedToTheFdHardLimit(self) -> None:
        """
        Part C asks for at most the fd hard limit less 200 (both the server and wsload hold
        one descriptor per connection and inherit the limit); a smaller ask stands.
        """
        import resource

        run = loadBench("run")
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if hard == resource.RLIM_INFINITY:
            self.assertEqual(run.fdAllowance(100_000), (100_000, hard))
        else:
            self.assertEqual(run.fdAllowance(10**9), (hard - 200, hard))
            self.assertEqual(run.fdAllowance(hard - 300), (hard - 300, hard))


class AbuseScriptTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.abuse = loadAbuse()

    def test_apiSignatureIsTheDocVector(self) -> None:
        """The script's HTTP API signature of the doc's vector is the doc's signature."""
        params = {
            "auth_key": KEY,
            "auth_timestamp": str(TIMESTAMP),
            "auth_version": "1.0",
            "body_md5": "ec365a775a4cd0599faeb73354201b6f",
        }
        self.assertEqual(
            self.abuse.apiSignature(SECRET, "POST", PATH, params),
            "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c",
        )
        self.assertEqual(
            self.abuse.signedParams("POST", PATH, BODY, TIMESTAMP)["body_md5"], params["body_md5"]
        )

    def test_notifySignatureBindsTheChannel(self) -> None:
        """
        The /notify signature of issue 11 is hex HMAC-SHA256(secret, ts + "." + channel + "."
        + body) (the vector from openssl dgst -sha256 -hmac), and another channel changes it.
        """
        body = b'{"event":"updated"}'
        self.assertEqual(
            self.abuse.notifySignature(SECRET, "1700000000", "public-orders", body),
            "cbc17a4162895f1023bfec2701dd2301613e40b42b258996d311d3c163bc1bcf",
        )
        self.assertNotEqual(
            self.abuse.notifySignature(SECRET, "1700000000", "private-admin", body),
            self.abuse.notifySignature(SECRET, "1700000000", "public-orders", body),
        )

    def test_tableEscapesCells(self) -> None:
        """A result holding | or a newline stays one cell of one markdown row."""
        rows = [self.abuse.Row("p", "a|b\nc", "x", True), self.abuse.Row("q", "r", "y", False)]
        self.assertEqual(
            self.abuse.table(rows).splitlines()[2:],
            ["| p | a\\|b c | x | yes |", "| q | r | y | no |"],
        )
