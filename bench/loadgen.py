"""
The load generator of the benchmark: one publisher here, the subscribers in a C child process.

The subscribers live in ``wsload`` (``wsload.c`` beside this file, built with ``cc -O2`` into
``.wsload`` when missing or older than its source): one epoll loop that does the WebSocket
handshakes itself, parses server frames minimally (unmasked, unfragmented text frames; pings are
answered, close codes recorded) and checks every event's data, which carries
``s:<sequence>:t:<monotonic ns when published>:``. Per connection it counts what arrived twice or
out of order; what never arrived is lost. Publish-to-receive latency is the receive time minus
the publish time, both CLOCK_MONOTONIC. Receiving a frame costs wsload a few µs of CPU, where
this process needed ~21 (twice what a server spends on a delivery), so that the latencies are
the servers' and not the load generator's.

This process drives wsload through lines on its stdin and stdout (the commands are described at
the top of ``wsload.c``) and publishes: HTTP/1.1 on one keep-alive connection, waiting for each
answer before the next request, so the order of events is defined. Its epoll loop watches the
publishing connection and wsload's stdout, where ``done K`` says that every subscriber has every
event before K. wsload inherits this process's CPU affinity.
"""

from __future__ import annotations

import os
import select
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CHANNEL = "bench"
EVENT = "m"
FRAME_PREFIX = f'{{"event":"{EVENT}","channel":"{CHANNEL}","data":"'
FRAME_SUFFIX = '"}'

WSLOAD_SOURCE = Path(__file__).resolve().parent / "wsload.c"
WSLOAD_BINARY = WSLOAD_SOURCE.parent / ".wsload"


def eventData(seq: int, sentNs: int, frameBytes: int) -> str:
    """The data of event C{seq}, padded so the frame a subscriber gets is C{frameBytes} long."""
    core = f"s:{seq}:t:{sentNs}:"
    pad = frameBytes - len(FRAME_PREFIX) - len(FRAME_SUFFIX) - len(core)
    return core + "x" * max(0, pad)


def eventFrame(data: str) -> str:
    """The JSON frame a Pusher server sends for C{data}: the peers broadcast exactly this."""
    return FRAME_PREFIX + data + FRAME_SUFFIX


def wsloadBinary() -> Path:
    """The wsload program, compiled (C{$CC}, default C{cc}, C{-O2}) if missing or out of date."""
    source, binary = WSLOAD_SOURCE, WSLOAD_BINARY
    if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return binary
    cc = shlex.split(os.environ.get("CC") or "cc")
    if shutil.which(cc[0]) is None:
        raise RuntimeError(f"bench: a C compiler ({cc[0]!r}, or $CC) is needed to build {source}")
    building = binary.with_name(f"{binary.name}.{os.getpid()}")
    done = subprocess.run(
        [*cc, "-O2", "-o", str(building), str(source)], capture_output=True, text=True
    )
    if done.returncode != 0:
        building.unlink(missing_ok=True)
        raise RuntimeError(f"bench: {shlex.join(cc)} could not build {source}:\n{done.stderr}")
    os.replace(building, binary)  # atomic: a concurrent run sees the old binary or the new one
    return binary


@dataclass
class Target:
    """How to reach one server under test."""

    name: str
    wsPort: int
    wsPath: str
    pusher: bool  # speaks the Pusher protocol (subscribe first) rather than plain broadcast
    pubPort: int
    makeRequest: Callable[[int, int], bytes]  # (seq, sent ns) -> one whole HTTP request
    host: str = "127.0.0.1"


@dataclass
class PhaseStats:
    published: int = 0  # answered 2xx
    publishErrors: int = 0
    received: int = 0  # unique (connection, sequence) pairs
    duplicated: int = 0
    outOfOrder: int = 0
    samples: int = 0  # latencies measured: one per event frame, repeated ones too
    p50Ns: int = 0
    p99Ns: int = 0
    maxNs: int = 0
    started: float = 0.0
    ended: float = 0.0
    subscribers: int = 0
    samplesPath: Path | None = None  # the latency samples, when dumped (int64 ns each)

    def expected(self) -> int:
        return self.published * self.subscribers

    def lost(self) -> int:
        return max(0, self.expected() - self.received)


class LoadGen:
    def __init__(self, target: Target, perAddress: int = 25000) -> None:
        self.target = target
        self.perAddress = perAddress  # subscribers per source address 127.0.0.x (wsload.c)
        self.ep = select.epoll()
        # the subscribers: wsload, started by the first connect
        self.wsload: subprocess.Popen[bytes] | None = None
        self.wsloadFd = -1  # its stdout
        self.wsloadOut = b""
        self.answers: list[str] = []
        self.ready = 0  # READY subscribers, as of wsload's last answer
        self.closedCodes: dict[int, int] = {}  # as of wsload's last answer
        self.pings = 0  # server pings wsload answered, as of its last answer
        self.pinged = 0  # subscribers that answered at least one, likewise
        self.done = 0  # every READY subscriber has every event of this phase before this one
        # publishing
        self.pub: socket.socket | None = None
        self.pubBuf = b""
        self.pubWaiting = False
        self.seq = 0  # next sequence number
        self.stats = PhaseStats()
        # where the next phase's latency samples go (raw int64 ns, see wsload's dump), or None
        self.samplesTo: Path | None = None

    # -- the loop --------------------------------------------------------------------------

    def pump(self, timeout: float) -> None:
        """Wait up to C{timeout} seconds for events and handle them all."""
        for fd, _ in self.ep.poll(timeout):
            if fd == self.wsloadFd:
                self._onWsload()
            elif self.pub is not None and fd == self.pub.fileno():
                self._onPublisher()

    # -- subscribers -----------------------------------------------------------------------

    @property
    def wsloadPid(self) -> int:
        """The process holding the subscribers."""
        assert self.wsload is not None, "no subscribers yet"
        return self.wsload.pid

    def _startWsload(self) -> subprocess.Popen[bytes]:
        if self.wsload is not None:
            return self.wsload
        t = self.target
        proc = subprocess.Popen(
            [
                str(wsloadBinary()),
                t.host,
                str(t.wsPort),
                t.wsPath,
                "pusher" if t.pusher else "plain",
                str(self.perAddress),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        # wsload shares this process's CPU (the load CPU): inherited, made sure of here.
        mine = os.sched_getaffinity(0)
        if os.sched_getaffinity(proc.pid) != mine:
            os.sched_setaffinity(proc.pid, mine)
        assert proc.stdout is not None
        self.wsloadFd = proc.stdout.fileno()
        os.set_blocking(self.wsloadFd, False)
        self.ep.register(self.wsloadFd, select.EPOLLIN)
        self.wsload = proc
        return proc

    def _onWsload(self) -> None:
        assert self.wsload is not None
        try:
            data = os.read(self.wsloadFd, 65536)
        except BlockingIOError:
            return
        if not data:
            code = self.wsload.wait(10)
            raise RuntimeError(f"wsload ended (exit status {code})")
        lines = (self.wsloadOut + data).split(b"\n")
        self.wsloadOut = lines.pop()
        for line in lines:
            text = line.decode()
            if text.startswith("done "):
                self.done = max(self.done, int(text[5:]))
            else:
                self.answers.append(text)

    def _command(self, line: str, timeout: float) -> dict[str, str]:
        """Send wsload one command; @return: its answer's fields (after its first word)."""
        proc = self._startWsload()
        assert proc.stdin is not None and not self.answers
        proc.stdin.write(line.encode() + b"\n")
        deadline = time.monotonic() + timeout
        while not self.answers:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"wsload did not answer {line!r} in {timeout:g}s")
            self.pump(min(left, 0.2))
        words = self.answers.pop(0).split()
        if words[0] == "error":
            raise RuntimeError(f"wsload: {line!r}: {' '.join(words[1:])}")
        fields = dict(zip(words[1::2], words[2::2], strict=True))
        self.ready = int(fields["ready"])
        self.pings = int(fields["pings"])
        self.pinged = int(fields["pinged"])
        codes = fields["codes"]
        self.closedCodes = (
            {}
            if codes == "-"
            else {int(code): int(n) for code, n in (item.split("=") for item in codes.split(","))}
        )
        return fields

    def connect(self, n: int, deadline: float, concurrency: int = 64) -> int:
        """Open C{n} subscribers, at most C{concurrency} handshakes at a time; @return: ready."""
        timeout = max(0.0, deadline - time.monotonic())
        self._command(f"connect {n} {timeout:.3f} {concurrency}", timeout + 30)
        return self.ready

    def closeAll(self) -> None:
        """Close every subscriber (wsload ends; the next connect starts another)."""
        proc = self.wsload
        if proc is None:
            return
        assert proc.stdin is not None and proc.stdout is not None
        self.ep.unregister(self.wsloadFd)
        try:
            proc.stdin.write(b"quit\n")
            proc.stdin.close()
            proc.wait(15)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait(5)
        proc.stdout.close()
        self.wsload = None
        self.wsloadFd = -1
        self.wsloadOut = b""
        self.answers.clear()
        self.ready = 0
        self.closedCodes = {}
        self.pings = 0
        self.pinged = 0

    # -- publishing ------------------------------------------------------------------------

    def _openPublisher(self) -> None:
        if self.pub is not None:
            return
        s = socket.create_connection((self.target.host, self.target.pubPort), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        self.pub = s
        self.ep.register(s.fileno(), select.EPOLLIN)

    def closePublisher(self) -> None:
        if self.pub is not None:
            self.ep.unregister(self.pub.fileno())
            self.pub.close()
            self.pub = None

    def publishOne(self) -> None:
        """Send the next event; its answer arrives through the loop."""
        assert self.pub is not None and not self.pubWaiting
        seq = self.seq
        self.seq += 1
        request = self.target.makeRequest(seq, time.monotonic_ns())
        self.pubWaiting = True
        self.pub.sendall(request)

    def _onPublisher(self) -> None:
        assert self.pub is not None
        try:
            data = self.pub.recv(65536)
        except BlockingIOError:
            return
        if not data:
            raise RuntimeError(f"{self.target.name} closed the publishing connection")
        self.pubBuf += data
        while True:
            answer = _httpAnswer(self.pubBuf)
            if answer is None:
                return
            status, used = answer
            self.pubBuf = self.pubBuf[used:]
            if 200 <= status < 300:
                self.stats.published += 1
            else:
                self.stats.publishErrors += 1
            self.pubWaiting = False

    # -- phases ----------------------------------------------------------------------------

    def newPhase(self) -> PhaseStats:
        """Start counting afresh; sequence numbers go on from where they were."""
        self._openPublisher()
        self._command(f"phase {self.seq}", 10)
        self.done = self.seq
        self.stats = PhaseStats(subscribers=self.ready)
        return self.stats

    def _endPhase(self) -> PhaseStats:
        """Fill in what wsload counted in this phase (and dump its samples, see L{samplesTo})."""
        stats = self.stats
        stats.ended = time.monotonic()
        fields = self._command("stats", 60)
        stats.received = int(fields["received"])
        stats.duplicated = int(fields["dup"])
        stats.outOfOrder = int(fields["ooo"])
        stats.samples = int(fields["samples"])
        stats.p50Ns, stats.p99Ns = int(fields["p50"]), int(fields["p99"])
        stats.maxNs = int(fields["max"])
        if self.samplesTo is not None:
            path, self.samplesTo = self.samplesTo, None
            if "\n" in str(path):
                raise ValueError(f"a samples path with a newline: {path!r}")
            self._command(f"dump {path}", 60)
            stats.samplesPath = path
        return stats

    def steady(self, rate: float, seconds: float, drain: float = 5.0) -> PhaseStats:
        """Publish C{rate} events a second for C{seconds}, then wait for them to arrive."""
        stats = self.newPhase()
        count = int(rate * seconds)
        interval = 1.0 / rate
        stats.started = t0 = time.monotonic()
        k = 0
        while k < count:
            due = t0 + k * interval
            now = time.monotonic()
            if now >= due and not self.pubWaiting:
                self.publishOne()
                k += 1
                continue
            wait = due - now if not self.pubWaiting else 0.05
            self.pump(max(0.0, min(wait, 0.05)))
            if now - t0 > seconds * 3 + 10:
                break  # the server does not answer: give up, the table will show it
        self._drain(drain)
        return self._endPhase()

    def flood(
        self, window: int, seconds: float, maxPublishes: int, drain: float = 5.0, stall: float = 5.0
    ) -> PhaseStats:
        """
        Publish as fast as the window allows: a publish is in flight until every subscriber got
        it, and at most C{window} are. Stops after C{seconds} or C{maxPublishes}.
        """
        stats = self.newPhase()
        first = done = self.seq
        stats.started = t0 = time.monotonic()
        progressAt = t0
        while True:
            now = time.monotonic()
            if self.done > done:
                done = self.done
                progressAt = now
            if now - t0 >= seconds or self.seq - first >= maxPublishes:
                break
            if now - progressAt > stall:
                break
            if not self.pubWaiting and self.seq - done < window:
                self.publishOne()
            self.pump(0.05 if self.pubWaiting or self.seq - done >= window else 0)
        self._drain(drain)
        return self._endPhase()

    def resetPinged(self) -> None:
        """Count the subscribers that answer a server ping afresh, from now (L{pinged})."""
        self._command("pingreset", 10)

    def idle(self, seconds: float) -> None:
        """Let time pass (wsload answers pings), then take the subscribers' counts."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.pump(min(left, 0.2))
        if self.wsload is not None:
            self._command("status", 10)

    def _drain(self, seconds: float) -> None:
        """Wait until every event published so far arrived everywhere, or C{seconds}."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not self.pubWaiting and self.done >= self.seq:
                return
            self.pump(0.02)


def _httpAnswer(buf: bytes) -> tuple[int, int] | None:
    """(status, bytes used) of the first whole HTTP response in C{buf}, or None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].decode("latin-1")
    lines = head.split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    pos = end + 4
    if "content-length" in headers:
        total = pos + int(headers["content-length"])
        return (status, total) if len(buf) >= total else None
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(buf[pos:eol].split(b";")[0], 16)
            pos = eol + 2 + size + 2
            if len(buf) < pos:
                return None
            if size == 0:
                return status, pos
    return status, pos
