"""
The HTTP/1.1 connection: twisted.web's L{HTTPChannel} with bounds and deadlines.

Bounds. A client that pipelines requests and never reads the replies must not make the server
hold its replies without end. twisted.web stops reading only when the transport says its write
buffer is full I{between} requests; a request answered synchronously (a static file's 404,
C{/metrics}) fills the buffer I{while} it is handled, so the pause never comes and the next
pipelined request is parsed from what was already read (a 64 KiB read holds ~2,000 of them).
Here, after every answered request:

  - if the transport has asked us to pause (its buffer passed its C{bufferSize}, 64 KiB for
    TCP), nothing more is parsed or read until it has sent everything and resumes us;
  - at most L{MAX_PIPELINED} requests are answered from one read: the rest waits for the next
    reactor turn, so one connection cannot keep the reactor from everybody else.

So a connection's unsent replies stay below the transport's buffer size plus one reply, and its
unparsed input below one read plus twisted.web's 16 KiB look-ahead.

Deadlines, one timer a connection, on the clock passed in, instead of twisted.web's idle timer
that every received byte restarts:

  - C{headers}: the request line and headers complete within C{headerTimeout} of the
    connection's start or of the request's first byte (the WebSocket upgrade request is the
    WebSocket handshake, so it is covered too);
  - C{body}: the body at C{bodyMinRate} bytes a second after C{headerTimeout} of grace:
    at any time, what has arrived must have taken at most C{headerTimeout + received /
    bodyMinRate}, so a body of a declared length is done within C{headerTimeout + length /
    bodyMinRate}; a chunked body is held to the same rate;
  - C{idle}: a keep-alive connection with no request in progress is closed after
    C{idleTimeout};
  - C{stalled}: a client that does not take a reply within C{idleTimeout} is cut off.

A request timed out before it was answered gets a 408 with a JSON body; otherwise the
connection is just closed. Nothing is timed while a request is being handled, and every timer
is cancelled when the connection is lost or taken over by a WebSocket (which keeps its own).

The fast path for publishes. Between requests, when what was read starts with a whole
C{POST /apps/{id}/events} or C{batch_events} of the plainest form (L{readPost}: HTTP/1.1, a
Content-Length, no Expect, no chunks, no C{Connection} but keep-alive, printable headers) and the
site's HTTP API (C{PushSite.publishAPI}) says the full path would publish it and answer
C{200 {}} (L{pushsvc.api.PusherAPI.checkPublish}), the channel has the API publish it and writes
the reply itself, without a twisted.web Request: the same bytes, the same recording, counters and
limits. Anything else, every error included, goes through twisted.web as it always did, so its
answer and log line are today's. Replies keep the requests' order: a publish is taken only when
no other request is in hand, and the same bounds and deadlines apply.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, _GenericHTTPChannelProtocol, _NoPushProducer

from pushsvc.fanout.writer import writeNow
from pushsvc.http.logthrottle import Throttle
from pushsvc.http.util import jsonBytes

log = Logger()

MAX_PIPELINED = 4  # requests answered from one read before the others wait a reactor turn
ABORT_GRACE = 5.0  # seconds a timed-out connection has to take its 408 before it is cut

FAST_PREFIX = b"POST /apps/"
MAX_FAST_HEAD = 8192  # request line and headers of a fast publish, at most
MAX_FAST_BODY = 1024 * 1024  # the API's own limits are smaller (checkPublish applies them)
MAX_FAST_HEADERS = 100
# The request line and headers: printable ASCII, a token before each colon, no folded lines.
_HEAD = re.compile(
    rb"POST (/apps/[\x21-\x7e]+) HTTP/1\.1((?:\r\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e]*)*)\Z"
)
# Headers that change how a request is read or answered: such a request takes the full path.
_UNUSUAL = frozenset((b"transfer-encoding", b"expect", b"upgrade", b"te", b"trailer"))


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~1 us more, per publish
class PlainPost:
    """A whole request read by L{readPost}."""

    target: bytes
    headers: Mapping[bytes, bytes]  # names lower-cased, each once
    body: bytes
    used: int  # bytes of the buffer it took


def readPost(buffer: bytes) -> PlainPost | None:
    """
    The C{POST /apps/...} at the start of C{buffer} if it is whole and of the plainest form, one
    twisted.web reads the same way: C{HTTP/1.1}; CRLF line ends; printable ASCII; each header once,
    none of L{_UNUSUAL}, no folded lines; C{Connection} absent or C{keep-alive}; a
    C{Content-Length} of digits, and that many bytes of body in C{buffer}. None otherwise.
    """
    if not buffer.startswith(FAST_PREFIX):
        return None
    end = buffer.find(b"\r\n\r\n", 0, MAX_FAST_HEAD)
    if end < 0:
        return None
    head = _HEAD.match(buffer, 0, end)
    if head is None:
        return None
    lines = head.group(2).split(b"\r\n")
    if len(lines) > MAX_FAST_HEADERS:
        return None
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.lower()
        if name in headers or name in _UNUSUAL:
            return None
        headers[name] = value.strip(b" \t")
    connection = headers.get(b"connection")
    if connection is not None and connection.lower() != b"keep-alive":
        return None
    length = headers.get(b"content-length")
    if length is None or not length.isdigit() or len(length) > 7:
        return None
    start = end + 4
    stop = start + int(length)
    if stop > len(buffer) or stop - start > MAX_FAST_BODY:
        return None
    return PlainPost(head.group(1), headers, buffer[start:stop], stop)


@dataclass(frozen=True)
class HTTPLimits:
    """The deadlines of L{BoundedHTTPChannel}, in seconds (rate in bytes a second)."""

    headerTimeout: float = 10.0
    bodyMinRate: int = 1024
    idleTimeout: float = 60.0


def timeoutReply(message: str) -> bytes:
    """A complete C{408} reply with C{{"error": message}}, closing the connection."""
    body = jsonBytes({"error": message})
    return (
        b"HTTP/1.1 408 Request Timeout\r\n"
        b"Content-Type: application/json; charset=utf-8\r\n"
        b"Cache-Control: no-store\r\n"
        b"X-Content-Type-Options: nosniff\r\n"
        b"Connection: close\r\n"
        b"Content-Length: %d\r\n\r\n" % (len(body),)
    ) + body


class EdgeLogs:
    """
    The log lines a client can set off at will, bounded per site (L{pushsvc.http.logthrottle}): a
    flood of slow or unread connections logs a few lines and a count, not a line each.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.late = Throttle(
            log,
            clock,
            "closed {count} more connections whose request did not arrive in time "
            "in the last {period:g} s",
        )
        self.unread = Throttle(
            log,
            clock,
            "closed {count} more connections that did not read their replies "
            "in the last {period:g} s",
        )

    def stop(self) -> None:
        """Cancel the periods in progress (the site stops)."""
        self.late.stop()
        self.unread.stop()


class BoundedHTTPChannel(HTTPChannel):
    """An L{HTTPChannel} with the bounds and deadlines described in the module docstring."""

    # The idle timer of twisted.web's TimeoutMixin is not used: the deadlines replace it.
    @property
    def timeOut(self) -> None:
        return None

    @timeOut.setter
    def timeOut(self, value: object) -> None:
        pass  # HTTPFactory.buildProtocol sets the site's; ignored

    def __init__(
        self, limits: HTTPLimits, clock: IReactorTime, logs: EdgeLogs | None = None
    ) -> None:
        super().__init__()
        self.limits = limits
        self.clock = clock
        self.logs = logs if logs is not None else EdgeLogs(clock)
        self._phase = ""  # what the timer is for: headers, body, idle, stalled, closing
        self._timer: IDelayedCall | None = None
        self._yieldCall: IDelayedCall | None = None
        self._answered = 0  # requests answered since the last read
        self._bodyStart = 0.0
        self._bodyLength: int | None = 0
        self._bodyReceived = 0
        self._done = False  # lost, or taken over by a WebSocket: no timers any more
        self._closing = False  # timed out: only the abort after ABORT_GRACE is left
        self._host: Any = None  # the transport's getHost(), asked once
        self.fastPublishes = 0  # publishes answered by the fast path
        self._committing = False  # a fast publish is being committed
        self._fastAnswered = False  # ... and was answered meanwhile

    # -- timers --------------------------------------------------------------------------

    def _arm(self, phase: str, delay: float) -> None:
        self._phase = phase
        timer = self._timer
        if timer is not None and timer.active():
            timer.reset(delay)
        else:
            self._timer = self.clock.callLater(delay, self._expired)

    def _disarm(self) -> None:
        self._phase = ""
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def stopTimers(self) -> None:
        """Cancel every timer of this connection, for good (lost, or no longer HTTP)."""
        self._done = True
        self._disarm()
        if self._yieldCall is not None:
            if self._yieldCall.active():
                self._yieldCall.cancel()
            self._yieldCall = None

    def setTimeout(self, period: float | None) -> None:
        # twisted.web calls this with None when the connection is lost; PushWebSocketResource
        # when a WebSocket takes the connection over. Both end this channel's timers.
        if period is None:
            self.stopTimers()

    def _expired(self) -> None:
        self._timer = None
        phase, self._phase = self._phase, ""
        transport: Any = self.transport
        if transport is None or self._done:
            return
        if phase == "body":
            # The time allowed grows with what has arrived, up to what the declared length
            # would take at the minimum rate.
            limits = self.limits
            received = self._bodyReceived
            if self._bodyLength is not None:
                received = min(received, self._bodyLength)
            allowed = limits.headerTimeout + received / limits.bodyMinRate
            left = self._bodyStart + allowed - self.clock.seconds()
            if left > 0:
                self._arm("body", left)
                return
        if getattr(transport, "disconnecting", False) and phase != "stalled":
            phase = "closing"  # closed already (a 400, a stop) and still not gone
        if phase in ("headers", "body"):
            part = "body" if phase == "body" else "headers"
            self.logs.late.info(
                "closing {peer}: its request {part} did not arrive in time",
                peer=str(self.getPeer()),
                part=part,
            )
            self._hold()
            self._closing = True
            transport.write(timeoutReply(f"The request {part} did not arrive in time."))
            self.loseConnection()
            self._arm("closing", ABORT_GRACE)
        elif phase == "idle":
            self._hold()
            self._closing = True
            self.loseConnection()
            self._arm("closing", ABORT_GRACE)
        elif phase in ("stalled", "closing"):
            if phase == "stalled":
                self.logs.unread.info(
                    "closing {peer}: it does not read its replies", peer=str(self.getPeer())
                )
            transport.abortConnection()

    # -- reading ------------------------------------------------------------------------------

    def _hold(self) -> None:
        """Parse and read nothing more until L{_resume}."""
        self.paused = True
        self._networkProducer.pauseProducing()

    def _resume(self) -> None:
        """
        Read and parse again when nothing stops it: no request in hand, the transport not full,
        no turn being waited for. Otherwise hold, with the stall deadline if the transport is
        full.
        """
        if self._done or self._closing or self.transport is None:
            return
        if self._handlingRequest:
            return
        if self._waitingForTransport:
            self._hold()
            if self._phase != "stalled":
                self._arm("stalled", self.limits.idleTimeout)
            return
        if self._answered >= MAX_PIPELINED and self._buffer:
            self._hold()
            self._disarm()
            if self._yieldCall is None:
                self._yieldCall = self.clock.callLater(0, self._nextTurn)
            return
        if self._yieldCall is not None:
            return
        if self._buffer:
            self._arm("headers", self.limits.headerTimeout)
        else:
            self._arm("idle", self.limits.idleTimeout)
        self.paused = False
        self._networkProducer.resumeProducing()
        if self._buffer and not self._busyReceiving:
            self._parse()  # what was read meanwhile

    def _nextTurn(self) -> None:
        self._yieldCall = None
        self._answered = 0
        self._resume()

    # -- HTTPChannel ------------------------------------------------------------------------

    def getHost(self) -> Any:
        # Each twisted.web Request asks (a getsockname); a connection's own address never changes.
        host = self._host
        if host is None and self.transport is not None:
            host = self._host = self.transport.getHost()
        return host

    def connectionMade(self) -> None:
        # HTTPChannel's, without its idle timer.
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)
        self._networkProducer = IPushProducer(self.transport, _NoPushProducer())
        self._networkProducer.registerProducer(self, True)  # type: ignore[attr-defined]  # the transport is a producer consumer
        self._arm("headers", self.limits.headerTimeout)

    def dataReceived(self, data: bytes) -> None:
        if not self._busyReceiving:
            self._answered = 0
        if self._phase == "idle":
            self._arm("headers", self.limits.headerTimeout)
        elif self._phase == "body":
            self._bodyReceived += len(data)
        if self._busyReceiving:
            LineReceiver.dataReceived(self, data)  # kept for the loop in progress
            return
        self._buffer += data
        self._parse()

    # -- the fast path for publishes (see the module docstring) --------------------------------

    def _parse(self) -> None:
        """Parse what is buffered: publishes the fast path takes, then twisted.web."""
        while self._buffer and not self.paused and self._fastPublish():
            self._answered += 1
            if self._waitingForTransport or self._answered >= MAX_PIPELINED:
                self._resume()  # holds, or waits a turn, as after any answered request
                return
            if self._done or self._closing or self.transport is None:
                return
            self._arm(
                "headers" if self._buffer else "idle",
                self.limits.headerTimeout if self._buffer else self.limits.idleTimeout,
            )
        if self._buffer and not self.paused:
            LineReceiver.dataReceived(self, b"")

    def _fastPublish(self) -> bool:
        """
        Answer the publish at the start of the buffer if the fast path takes it (see the module
        docstring); whether it did. Between requests only: none in hand, nothing half parsed.
        """
        if (
            not self.line_mode
            or self.requests
            or self._handlingRequest
            or not self.persistent
            or self._receivedHeaderSize
            or self._done
            or self._closing
            or getattr(self.transport, "disconnecting", True)  # closing after a 400, a stop
        ):
            return False
        site: Any = getattr(self, "site", None)
        api = getattr(site, "publishAPI", None)
        if api is None or site.logPublishes or site.trustedProxies:
            return False
        slot = getattr(self, "connectionSlot", None)
        if slot is not None and (slot.refusal is not None or slot.proxied):
            return False  # PushRequest answers over a connection cap
        post = readPost(self._buffer)
        if post is None:
            return False
        checked = api.checkPublish(post.target, post.body)
        if checked is None:
            return False
        self._buffer = self._buffer[post.used :]
        self._fastPost = post
        self._fastAnswered = False
        self._committing = True
        try:
            api.commitPublish(checked, self._fastAnswer)
        finally:
            self._committing = False
        self.fastPublishes += 1
        if self._fastAnswered:
            return True
        # The broker has not taken it yet: hold the connection as twisted.web holds one whose
        # request is being handled; what arrives meanwhile waits in _dataBuffer.
        self._disarm()
        self._handlingRequest = True
        self.setRawMode()
        if self._buffer:
            self._dataBuffer.append(self._buffer)
            self._buffer = b""
        return False

    def _fastAnswer(self, status: int, obj: Any, headers: Mapping[str, str], chunked: bool) -> None:
        """Write the reply of the fast publish in hand (what the full path would write)."""
        self._fastAnswered = True
        post = self._fastPost
        site: Any = getattr(self, "site", None)
        reply, sent = site.publishReply(status, obj, headers, chunked)
        transport = self.transport
        if transport is not None and not self._done:
            writeNow(transport, reply)
        if status >= 400:
            site.logFastPublish(self, post, status, sent)
        if not self._committing:  # answered later: go on as after any request
            self._handlingRequest = False
            self._answered += 1
            self._nextRequest()

    def allHeadersReceived(self) -> None:
        super().allHeadersReceived()
        if self.length != 0 and not self._done:
            self._bodyStart = self.clock.seconds()
            self._bodyLength = self.length
            self._bodyReceived = 0
            self._arm("body", self.limits.headerTimeout)

    def allContentReceived(self) -> None:
        self._disarm()
        super().allContentReceived()
        if self.transport is None:  # a WebSocket took the connection over
            self.stopTimers()

    def requestDone(self, request: Any) -> None:
        if request != self.requests[0]:
            raise TypeError
        del self.requests[0]
        if not self.persistent:
            self.loseConnection()
            return
        self._handlingRequest = False
        self._answered += 1
        self._nextRequest()

    def _nextRequest(self) -> None:
        # What arrived while the request was handled comes before what is left of the read.
        if self._dataBuffer:
            self._buffer = b"".join(self._dataBuffer) + self._buffer
            self._dataBuffer = []
        self.line_mode = 1
        if not self.paused and (self._waitingForTransport or self._answered >= MAX_PIPELINED):
            self.paused = True  # stops the parsing loop of the read in progress, if any
        self._resume()

    def pauseProducing(self) -> None:
        self._waitingForTransport = True
        if self._requestProducer is not None:
            self._requestProducer.pauseProducing()
        if self._done or self._closing:
            return
        # The network too while a request is handled: twisted.web would go on buffering what
        # a client pipelines behind it.
        self._networkProducer.pauseProducing()
        if not self._handlingRequest:
            self.paused = True
        self._arm("stalled", self.limits.idleTimeout)

    def resumeProducing(self) -> None:
        self._waitingForTransport = False
        if self._requestProducer is not None:
            self._requestProducer.resumeProducing()
        if self._done or self._closing:
            return
        if self._handlingRequest:
            if self._phase == "stalled":
                self._disarm()
            if sum(map(len, self._dataBuffer)) <= self._optimisticEagerReadSize:
                self._networkProducer.resumeProducing()
            return
        self._resume()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.stopTimers()
        super().connectionLost(reason)


def channelFactory(limits: HTTPLimits, clock: IReactorTime) -> Any:
    """What to set as a Site's C{protocol}: builds L{BoundedHTTPChannel}s."""

    logs = EdgeLogs(clock)

    def build() -> _GenericHTTPChannelProtocol:
        return _GenericHTTPChannelProtocol(BoundedHTTPChannel(limits, clock, logs))

    build.logs = logs  # type: ignore[attr-defined]  # stopped by PushSite.stopFactory
    return build
