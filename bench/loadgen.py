"""
The load generator of the benchmark: many WebSocket subscribers and one publisher in one
single-threaded epoll loop, with no framework in between, so that it is not the bottleneck.

Each subscriber does the WebSocket handshake itself, parses server frames minimally (unmasked,
unfragmented text frames; pings are answered, close frames recorded) and checks every event's
data, which carries ``s:<sequence>:t:<monotonic ns when published>:``. Per connection it counts
what arrived twice or out of order; what never arrived is lost. Publish-to-receive latency is the
receive time minus the publish time (the same clock: the publisher is in this process).

The publisher speaks HTTP/1.1 on one keep-alive connection and waits for each answer before the
next request, so the order of events is defined.
"""

from __future__ import annotations

import errno
import os
import re
import select
import socket
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

CHANNEL = "bench"
EVENT = "m"
FRAME_PREFIX = f'{{"event":"{EVENT}","channel":"{CHANNEL}","data":"'
FRAME_SUFFIX = '"}'

_SEQ = re.compile(rb"s:(\d+):t:(\d+):")
_HANDSHAKE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="

# subscriber states
CONNECTING, HANDSHAKE, JOINING, READY, CLOSED = range(5)

IN = select.EPOLLIN
OUT = select.EPOLLOUT


def eventData(seq: int, sentNs: int, frameBytes: int) -> str:
    """The data of event C{seq}, padded so the frame a subscriber gets is C{frameBytes} long."""
    core = f"s:{seq}:t:{sentNs}:"
    pad = frameBytes - len(FRAME_PREFIX) - len(FRAME_SUFFIX) - len(core)
    return core + "x" * max(0, pad)


def eventFrame(data: str) -> str:
    """The JSON frame a Pusher server sends for C{data}: the peers broadcast exactly this."""
    return FRAME_PREFIX + data + FRAME_SUFFIX


def maskedFrame(payload: bytes, opcode: int = 0x1) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    else:
        header = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + body


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


class Sub:
    __slots__ = ("sock", "fd", "state", "buf", "last", "seen", "closeCode")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.state = CONNECTING
        self.buf = b""
        self.last = -1
        self.seen = bytearray()
        self.closeCode: int | None = None


@dataclass
class PhaseStats:
    published: int = 0  # answered 2xx
    publishErrors: int = 0
    received: int = 0  # unique (connection, sequence) pairs
    duplicated: int = 0
    outOfOrder: int = 0
    latencies: array = field(default_factory=lambda: array("q"))
    started: float = 0.0
    ended: float = 0.0
    subscribers: int = 0

    def expected(self) -> int:
        return self.published * self.subscribers

    def lost(self) -> int:
        return max(0, self.expected() - self.received)


class LoadGen:
    def __init__(self, target: Target, frameBytes: int = 100) -> None:
        self.target = target
        self.frameBytes = frameBytes
        self.ep = select.epoll()
        self.subs: dict[int, Sub] = {}
        self.ready = 0
        self.closedCodes: dict[int | None, int] = {}
        # publishing
        self.pub: socket.socket | None = None
        self.pubBuf = b""
        self.pubWaiting = False
        self.seq = 0  # next sequence number
        self.sentAt: dict[int, int] = {}
        self.recvCount = array("l")  # per sequence: connections that got it
        self.stats = PhaseStats()
        self.onAnswer: Callable[[bool], None] | None = None
        self.subscribeFrame = maskedFrame(
            b'{"event":"pusher:subscribe","data":{"channel":"%s"}}' % CHANNEL.encode())
        t = target
        self.handshake = (
            f"GET {t.wsPath} HTTP/1.1\r\nHost: {t.host}:{t.wsPort}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {_HANDSHAKE_KEY}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode()

    # -- the loop --------------------------------------------------------------------------

    def pump(self, timeout: float) -> None:
        """Wait up to C{timeout} seconds for events and handle them all."""
        for fd, _ in self.ep.poll(timeout, 1024):
            sub = self.subs.get(fd)
            if sub is None:
                if self.pub is not None and fd == self.pub.fileno():
                    self._onPublisher()
                continue
            if sub.state == READY:
                self._onReadable(sub)
            elif sub.state == CONNECTING:
                self._onConnected(sub)
            else:
                self._onReadable(sub)

    # -- subscribers -----------------------------------------------------------------------

    def connect(self, n: int, deadline: float, concurrency: int = 64) -> int:
        """Open C{n} subscribers, at most C{concurrency} handshakes at a time; @return: ready."""
        t = self.target
        opened = 0
        while time.monotonic() < deadline:
            pending = len(self.subs) - self.ready - self._closedCount()
            while opened < n and pending < concurrency:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                err = s.connect_ex((t.host, t.wsPort))
                if err not in (0, errno.EINPROGRESS):
                    s.close()
                    raise OSError(err, os.strerror(err))
                sub = Sub(s)
                self.subs[sub.fd] = sub
                self.ep.register(sub.fd, OUT)
                opened += 1
                pending += 1
            if self.ready + self._closedCount() >= n:
                break
            self.pump(0.05)
        return self.ready

    def _closedCount(self) -> int:
        return sum(self.closedCodes.values())

    def _onConnected(self, sub: Sub) -> None:
        err = sub.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._close(sub, None)
            return
        sub.state = HANDSHAKE
        self.ep.modify(sub.fd, IN)
        sub.sock.send(self.handshake)

    def _close(self, sub: Sub, code: int | None) -> None:
        if sub.state == CLOSED:
            return
        if sub.state == READY:
            self.ready -= 1
        sub.state = CLOSED
        sub.closeCode = code
        self.closedCodes[code] = self.closedCodes.get(code, 0) + 1
        try:
            self.ep.unregister(sub.fd)
        except OSError:
            pass
        sub.sock.close()

    def closeAll(self) -> None:
        for sub in list(self.subs.values()):
            if sub.state != CLOSED:
                try:
                    self.ep.unregister(sub.fd)
                except OSError:
                    pass
                sub.sock.close()
                sub.state = CLOSED
        self.subs.clear()
        self.ready = 0
        self.closedCodes.clear()

    def _onReadable(self, sub: Sub) -> None:
        try:
            data = sub.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError:
            self._close(sub, None)
            return
        if not data:
            self._close(sub, sub.closeCode)
            return
        now = time.monotonic_ns()
        buf = sub.buf + data if sub.buf else data
        if sub.state == HANDSHAKE:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                sub.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self._close(sub, -1)
                return
            sub.state = JOINING
            buf = buf[end + 4:]
        n = len(buf)
        pos = 0
        stats = self.stats
        while n - pos >= 2:
            ln = buf[pos + 1] & 0x7F
            if ln < 126:
                start = pos + 2
            elif ln == 126:
                if n - pos < 4:
                    break
                ln = int.from_bytes(buf[pos + 2:pos + 4], "big")
                start = pos + 4
            else:
                if n - pos < 10:
                    break
                ln = int.from_bytes(buf[pos + 2:pos + 10], "big")
                start = pos + 10
            end = start + ln
            if end > n:
                break
            op = buf[pos] & 0x0F
            pos = end
            if op == 1 and sub.state == READY:
                m = _SEQ.search(buf, start, end)
                if m is None:
                    continue
                seq = int(m[1])
                stats.latencies.append(now - int(m[2]))
                seen = sub.seen
                if seq >= len(seen):
                    seen.extend(bytes(seq + 1024 - len(seen)))
                if seen[seq]:
                    stats.duplicated += 1
                    continue
                seen[seq] = 1
                stats.received += 1
                self.recvCount[seq] += 1
                if seq < sub.last:
                    stats.outOfOrder += 1
                else:
                    sub.last = seq
            elif op == 1:
                self._joining(sub, buf[start:end])
            elif op == 9:
                sub.sock.send(maskedFrame(buf[start:end], 0xA))
            elif op == 8:
                code = int.from_bytes(buf[start:start + 2], "big") if ln >= 2 else 1005
                self._close(sub, code)
                return
        sub.buf = buf[pos:] if pos < n else b""

    def _joining(self, sub: Sub, payload: bytes) -> None:
        if not self.target.pusher:
            if payload == b"ok":
                sub.state = READY
                self.ready += 1
            return
        if b"pusher:connection_established" in payload:
            sub.sock.send(self.subscribeFrame)
        elif b"pusher_internal:subscription_succeeded" in payload:
            sub.state = READY
            self.ready += 1

    # -- publishing ------------------------------------------------------------------------

    def _openPublisher(self) -> None:
        if self.pub is not None:
            return
        s = socket.create_connection((self.target.host, self.target.pubPort), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        self.pub = s
        self.ep.register(s.fileno(), IN)

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
        if len(self.recvCount) <= seq:
            self.recvCount.extend([0] * 1024)
        now = time.monotonic_ns()
        self.sentAt[seq] = now
        request = self.target.makeRequest(seq, now)
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
            ok = 200 <= status < 300
            if ok:
                self.stats.published += 1
            else:
                self.stats.publishErrors += 1
            self.pubWaiting = False
            if self.onAnswer is not None:
                self.onAnswer(ok)

    # -- phases ----------------------------------------------------------------------------

    def newPhase(self) -> PhaseStats:
        """Start counting afresh; sequence numbers go on from where they were."""
        self.stats = PhaseStats(subscribers=self.ready)
        self._openPublisher()
        return self.stats

    def steady(self, rate: float, seconds: float, drain: float = 5.0) -> PhaseStats:
        """Publish C{rate} events a second for C{seconds}, then wait for them to arrive."""
        stats = self.newPhase()
        first = self.seq
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
        self._drain(first, drain)
        stats.ended = time.monotonic()
        return stats

    def flood(self, window: int, seconds: float, maxPublishes: int,
              drain: float = 5.0, stall: float = 5.0) -> PhaseStats:
        """
        Publish as fast as the window allows: a publish is in flight until every subscriber got
        it, and at most C{window} are. Stops after C{seconds} or C{maxPublishes}.
        """
        stats = self.newPhase()
        first = done = self.seq
        stats.started = t0 = time.monotonic()
        progressAt = t0
        recvCount = self.recvCount
        while True:
            now = time.monotonic()
            need = self.ready
            while done < self.seq and recvCount[done] >= need:
                done += 1
                progressAt = now
            if now - t0 >= seconds or self.seq - first >= maxPublishes:
                break
            if now - progressAt > stall:
                break
            if not self.pubWaiting and self.seq - done < window:
                self.publishOne()
            self.pump(0.05 if self.pubWaiting or self.seq - done >= window else 0)
        self._drain(first, drain)
        stats.ended = time.monotonic()
        return stats

    def idle(self, seconds: float) -> None:
        """Let time pass, answering pings."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.pump(min(left, 0.2))

    def _drain(self, first: int, seconds: float) -> None:
        """Wait until every event published in this phase arrived everywhere, or C{seconds}."""
        deadline = time.monotonic() + seconds
        stats = self.stats
        while time.monotonic() < deadline:
            if not self.pubWaiting and stats.received >= stats.expected():
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
