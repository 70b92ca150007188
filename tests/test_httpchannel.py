"""
The HTTP connection's bounds and deadlines (L{pushsvc.http.channel}), on a Clock and in-memory
transports; one test on a real socket pipelines without reading.
"""

from __future__ import annotations

import fcntl
import json
import re
import socket
import struct
import termios
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from pushsvc.http.channel import MAX_PIPELINED, BoundedHTTPChannel, HTTPLimits
from pushsvc.http.site import PushSite, makeSite
from pushsvc.ws.protocol import makeAppResource
from tests.helpers import captureLogs, listenLocal, sevenResources
from tests.test_protocol import PATH, Server

NOPE = b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
INDEX = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


class _Sink:
    """An access log file that keeps nothing."""

    def write(self, data: str) -> None:
        pass

    def close(self) -> None:
        pass


class FullTransport(StringTransport):
    """
    A transport like TCP's: it asks its producer to pause once more than C{bufferSize} bytes
    are unsent, and to resume when L{drain} has taken them all. Nothing is drained otherwise:
    a client that never reads.
    """

    bufferSize = 4096

    def __init__(self) -> None:
        super().__init__()
        self.full = False

    def write(self, data: bytes) -> None:
        super().write(data)
        self._check()

    def writeSequence(self, seq: Any) -> None:
        super().writeSequence(seq)
        self._check()

    def _check(self) -> None:
        if self.producer is not None and not self.full and len(self.value()) > self.bufferSize:
            self.full = True
            self.producer.pauseProducing()

    def drain(self) -> bytes:
        data: bytes = self.value()
        self.clear()
        if self.full and self.producer is not None:
            self.full = False
            self.producer.resumeProducing()
        return data


class Later(Resource):
    """Answers every request after a second on the clock, with C{size} bytes."""

    isLeaf = True

    def __init__(self, clock: Clock, size: int = 100) -> None:
        super().__init__()
        self.clock = clock
        self.size = size
        self.started = 0

    def render(self, request: Request) -> Any:
        self.started += 1

        def answer() -> None:
            if not request.finished and not request._disconnected:
                request.write(b"x" * self.size)
                request.finish()

        self.clock.callLater(1, answer)
        return NOT_DONE_YET


class TakeOver(Resource):
    """What Autobahn's WebSocketResource does to the channel: takes its transport."""

    isLeaf = True

    def render(self, request: Request) -> Any:
        request.channel.transport = None
        return NOT_DONE_YET


def replies(data: bytes) -> list[bytes]:
    """The status codes of the replies in C{data}, in order."""
    return re.findall(rb"HTTP/1\.1 (\d{3}) ", data)


class ChannelCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        pages = Path(self.mktemp())
        pages.mkdir()
        (pages / "index.html").write_text("<p>hi</p>")
        self.later = Later(self.clock)
        self.site = makeSite(
            pages,
            self.later,
            Resource(),
            Resource(),
            TakeOver(),
            Resource(),
            Resource(),
            Resource(),
            HTTPLimits(10, 1024, 60),
            self.clock,
        )
        self.site.startFactory()
        self.addCleanup(self.site.stopFactory)
        self.site.logFile = _Sink()

    def connect(self, transport: StringTransport | None = None) -> tuple[Any, StringTransport]:
        protocol = self.site.buildProtocol(None)
        transport = transport if transport is not None else StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def channel(self, protocol: Any) -> BoundedHTTPChannel:
        channel = protocol._channel
        assert isinstance(channel, BoundedHTTPChannel)
        return channel

    def timers(self, protocol: Any) -> list[Any]:
        """The clock's pending calls that belong to this connection's channel."""
        channel = self.channel(protocol)
        return [
            c
            for c in self.clock.getDelayedCalls()
            if getattr(getattr(c, "func", None), "__self__", None) is channel
        ]


class PipeliningTests(ChannelCase):
    def test_onlyFewAnsweredPerRead(self) -> None:
        """
        Of 500 requests pipelined in one read, MAX_PIPELINED are answered; the rest wait for
        the next reactor turn, and reading stops meanwhile.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(NOPE * 500)
        self.assertEqual(replies(transport.value()), [b"404"] * MAX_PIPELINED)
        self.assertEqual(transport.producerState, "paused")
        self.assertIn("_nextTurn", [c.func.__name__ for c in self.timers(protocol)])
        self.clock.advance(0)  # runs every turn that is due, here all of them
        self.assertEqual(len(replies(transport.value())), 500)
        self.assertEqual(transport.producerState, "producing")

    def test_stopsReadingWhenRepliesAreNotTaken(self) -> None:
        """
        A client that pipelines and never reads: once the transport is full the channel parses
        and reads nothing more, however many turns pass; unsent bytes stay within the
        transport's buffer size and one reply. Draining resumes it, and every request is
        answered in order in the end.
        """
        transport = FullTransport()
        protocol, _ = self.connect(transport)
        protocol.dataReceived(NOPE * 500)
        for _ in range(1000):
            self.clock.advance(0)
        unsent = transport.value()
        answered = replies(unsent)
        self.assertTrue(transport.full)
        self.assertEqual(transport.producerState, "paused")
        self.assertLess(len(answered), 500)
        oneReply = len(unsent) // len(answered)
        self.assertLessEqual(len(unsent), transport.bufferSize + oneReply)
        total = 0
        for _ in range(500):
            total += len(replies(transport.drain()))
            self.clock.advance(0)
            if total == 500:
                break
        self.assertEqual(total, 500)
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual([c.func.__name__ for c in self.timers(protocol)], ["_expired"])
        self.assertEqual(self.channel(protocol)._phase, "idle")

    def test_asyncRequestsBounded(self) -> None:
        """
        The same for a resource that answers later: while one request is handled, reading stops
        once its look-ahead is full, and once the transport is full no more are started.
        """
        self.later.size = 3000
        transport = FullTransport()
        protocol, _ = self.connect(transport)
        request = b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n"
        for _ in range(50):  # 50 reads of 1,000 requests: more than the look-ahead allows
            if transport.producerState == "paused":
                break
            protocol.dataReceived(request * 1000)
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(self.later.started, 1)
        for _ in range(20):
            self.clock.advance(1)
        self.assertLessEqual(self.later.started, 3)  # 4 KiB of buffer holds one 3 KB reply
        self.assertTrue(transport.full)
        self.assertEqual(transport.producerState, "paused")

    def test_clientNotReadingIsCutOff(self) -> None:
        """A connection whose unsent replies are not taken within the idle timeout is aborted."""
        transport = FullTransport()
        protocol, _ = self.connect(transport)
        protocol.dataReceived(NOPE * 500)
        for _ in range(200):
            self.clock.advance(0)
        self.assertTrue(transport.full)
        self.clock.advance(59)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnected)  # aborted: StringTransport's abortConnection

    def test_drainingInTimeKeepsTheConnection(self) -> None:
        """The stall deadline restarts each time the client takes everything."""
        transport = FullTransport()
        protocol, _ = self.connect(transport)
        protocol.dataReceived(NOPE * 500)
        for _ in range(5):
            for _ in range(200):
                self.clock.advance(0)
            self.clock.advance(50)
            transport.drain()
        self.assertFalse(transport.disconnecting)


class DeadlineTests(ChannelCase):
    def assertTimedOut(self, transport: StringTransport, part: str) -> None:
        self.assertTrue(transport.disconnecting)
        head, body = transport.value().split(b"\r\n\r\n", 1)
        self.assertTrue(head.startswith(b"HTTP/1.1 408 "), head)
        self.assertIn(b"Content-Type: application/json", head)
        self.assertEqual(json.loads(body), {"error": f"The request {part} did not arrive in time."})

    def test_dribbledHeadersClosedAt10s(self) -> None:
        """Headers sent a byte a second are closed at 10 s with a 408, though bytes keep coming."""
        protocol, transport = self.connect()
        header = b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 100
        for i in range(9):
            protocol.dataReceived(header[i : i + 1])
            self.clock.advance(1)
        protocol.dataReceived(header[9:10])
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTimedOut(transport, "headers")

    def test_floodOfSlowConnectionsLogsBounded(self) -> None:
        """
        300 connections that never finish their headers are each closed with a 408, but the
        log gets the first 10 in full and then one line with the count of the rest.
        """
        events = captureLogs(self)
        transports = []
        for _ in range(300):
            protocol, transport = self.connect()
            protocol.dataReceived(b"GET / HTTP/1.1\r\n")
            transports.append(transport)
        self.clock.advance(10)
        for transport in transports:
            self.assertTimedOut(transport, "headers")
        lines = [formatEvent(e) for e in events if e.get("log_namespace", "").startswith("pushsvc")]
        self.assertEqual(len(lines), 10)
        self.clock.advance(60)
        lines = [formatEvent(e) for e in events if e.get("log_namespace", "").startswith("pushsvc")]
        self.assertEqual(len(lines), 11)
        self.assertIn("closed 290 more connections whose request did not arrive in time", lines[-1])

    def test_silentConnection(self) -> None:
        """A connection that sends nothing gets its 408 at the header deadline."""
        protocol, transport = self.connect()
        self.clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTimedOut(transport, "headers")

    def test_abortedIfThe408IsNotTaken(self) -> None:
        """After its 408, a connection that does not go away is aborted."""
        protocol, transport = self.connect()
        self.clock.advance(10)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)
        self.clock.advance(5)
        self.assertTrue(transport.disconnected)

    def test_badRequestNotTakenIsAborted(self) -> None:
        """A connection closed with twisted.web's 400 that does not go away is aborted, no 408."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"NOT HTTP\r\n\r\n")
        self.assertTrue(transport.disconnecting)
        self.clock.advance(10)
        self.assertTrue(transport.disconnected)
        self.assertEqual(replies(transport.value()), [b"400"])

    def test_idleKeepAliveClosedQuietly(self) -> None:
        """After a reply, an idle connection is closed at the idle timeout, with no 408."""
        protocol, transport = self.connect()
        protocol.dataReceived(NOPE)
        self.clock.advance(59)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(replies(transport.value()), [b"404"])

    def test_nextRequestHasTheHeaderDeadline(self) -> None:
        """The first byte of the next request on a kept-alive connection starts its 10 s."""
        protocol, transport = self.connect()
        protocol.dataReceived(NOPE)
        self.clock.advance(30)
        protocol.dataReceived(b"G")
        self.clock.advance(9)
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(NOPE[1:])
        self.assertEqual(replies(transport.value()), [b"404", b"404"])
        self.clock.advance(59)
        self.assertFalse(transport.disconnecting)

    def post(self, length: int | None) -> tuple[Any, StringTransport]:
        protocol, transport = self.connect()
        if length is None:
            framing = b"Transfer-Encoding: chunked\r\n"
        else:
            framing = b"Content-Length: %d\r\n" % length
        protocol.dataReceived(b"POST /api/x HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n")
        return protocol, transport

    def test_slowButHonestBody(self) -> None:
        """A 40 KiB body at 2 KiB/s (50% above the minimum rate) is received and answered."""
        protocol, transport = self.post(40 * 1024)
        for _ in range(20):
            protocol.dataReceived(b"x" * 2048)
            self.clock.advance(1)
        self.assertEqual(self.later.started, 1)
        self.assertFalse(transport.disconnecting)

    def test_bodyTooSlow(self) -> None:
        """
        A 40 KiB body at 100 bytes/s is cut with a 408 once what has arrived has taken more
        than 10 s plus its size at the minimum rate (here at ~11.2 s), long before the 50 s
        its length allows.
        """
        protocol, transport = self.post(40 * 1024)
        while not transport.disconnecting and self.clock.seconds() < 60:
            protocol.dataReceived(b"x" * 100)
            self.clock.advance(1)
        self.assertEqual(self.clock.seconds(), 12)
        self.assertTimedOut(transport, "body")
        self.assertEqual(self.later.started, 0)

    def test_chunkedBodyTooSlow(self) -> None:
        """A chunked body is held to the same rate."""
        protocol, transport = self.post(None)
        while not transport.disconnecting and self.clock.seconds() < 60:
            protocol.dataReceived(b"10\r\n" + b"y" * 16 + b"\r\n")
            self.clock.advance(1)
        self.assertEqual(self.clock.seconds(), 11)
        self.assertTimedOut(transport, "body")

    def test_chunkedBodyAtRate(self) -> None:
        """A chunked body at the minimum rate is received."""
        protocol, transport = self.post(None)
        for _ in range(30):
            protocol.dataReceived(b"400\r\n" + b"y" * 1024 + b"\r\n")
            self.clock.advance(1)
        protocol.dataReceived(b"0\r\n\r\n")
        self.assertEqual(self.later.started, 1)
        self.assertFalse(transport.disconnecting)

    def test_noTimerWhileHandling(self) -> None:
        """A request being handled is not timed: the resource answers when it will."""
        self.later.clock = Clock()  # answers only when the test says
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(self.timers(protocol), [])
        self.clock.advance(1000)
        self.assertFalse(transport.disconnecting)
        self.later.clock.advance(1)
        self.assertEqual(replies(transport.value()), [b"200"])
        self.assertEqual(len(self.timers(protocol)), 1)

    def test_timersGoneWithConnection(self) -> None:
        """A lost connection leaves no timer behind, whatever it was doing."""
        for data in (b"", b"GET / HT", NOPE * 50):
            protocol, transport = self.connect()
            protocol.dataReceived(data)
            protocol.connectionLost(None)
            self.assertEqual(self.timers(protocol), [])

    def test_takenOverLeavesNoTimer(self) -> None:
        """A connection taken over (as a WebSocket does) keeps no timer of the channel."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /notify/x HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(self.timers(protocol), [])
        self.channel(protocol).pauseProducing()  # the transport, still told about the channel
        self.channel(protocol).resumeProducing()
        self.assertEqual(self.timers(protocol), [])

    def test_realWebSocketLeavesNoTimer(self) -> None:
        """
        After a real WebSocket upgrade through the site, no timer of the HTTP channel is left,
        and the site no longer counts the connection as HTTP.
        """
        server = Server(self.clock)
        resource: Any = makeAppResource(
            server.apps, server.hub, server.registry, self.clock, server.settings
        )
        resource._factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
        self.site.resource.putChild(b"app", resource)
        protocol, transport = self.connect()
        transport.protocol = protocol  # type: ignore[attr-defined]  # Autobahn swaps it
        protocol.dataReceived(
            f"GET {PATH} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self.assertIn(b"101 Switching Protocols", transport.value())
        self.assertIn(b"pusher:connection_established", transport.value())
        self.assertEqual(self.timers(protocol), [])
        self.assertNotIn(protocol, self.site.channels)
        self.clock.advance(120)
        self.assertFalse(transport.disconnecting)


class _Pipeliner(Protocol):
    """
    Pipelines C{GET /nope} and C{GET /}, at most C{limit}, as fast as its socket takes them (a pull
    producer: asked for more each time its buffer is sent); reads nothing.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sent = 0
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.pauseProducing()  # type: ignore[union-attr]  # never reads
        self.transport.registerProducer(self, False)  # type: ignore[union-attr]  # connected: transport is set

    def resumeProducing(self) -> None:
        if self.sent < self.limit:
            self.transport.write((NOPE + INDEX) * 50)  # type: ignore[union-attr]  # connected: transport is set
            self.sent += 100

    def pauseProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed.callback(None)


class RealSocketTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_pipeliningWithoutReadingStopsTheServer(self) -> Any:
        """
        On a real socket, a client pipelining GET /nope (a 404 written at once) and GET / (a
        static file, sent by a producer) without reading is no longer read from
        once the replies back up: the server's channel holds, its socket is not read and has
        the client's requests waiting in its receive queue, and its unsent replies stay within
        the transport's buffer size and a turn's replies.
        """
        pages = Path(self.mktemp())
        pages.mkdir()
        (pages / "index.html").write_text("<p>hi</p>" * 50)
        site = makeSite(pages, *sevenResources(), clock=reactor)
        site.logFile = _Sink()
        port: Any = listenLocal(site)
        self.addCleanup(port.stopListening)
        # Small kernel buffers on both sides (the accepted socket inherits the listening
        # one's), so that they fill after hundreds of requests, not hundreds of thousands.
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            port.socket.setsockopt(socket.SOL_SOCKET, option, 8192)
        held: Deferred[BoundedHTTPChannel] = Deferred(lambda d: None)
        seen: list[BoundedHTTPChannel] = []
        pause = BoundedHTTPChannel.pauseProducing

        def pauseProducing(channel: BoundedHTTPChannel) -> None:
            pause(channel)
            if not seen:  # look once the request in hand, if any, is done
                seen.append(channel)
                reactor.callLater(0, held.callback, channel)

        self.patch(BoundedHTTPChannel, "pauseProducing", pauseProducing)
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", port.getHost().port))
        raw.setblocking(False)
        client = _Pipeliner(limit=100_000)
        factory = Factory.forProtocol(lambda: client)
        clientPort: Any = reactor.adoptStreamConnection(  # type: ignore[attr-defined]  # the default reactor has it
            raw.fileno(), socket.AF_INET, factory
        )
        raw.close()  # adoptStreamConnection took a copy
        channel = yield held.addTimeout(20, reactor)
        server: Any = channel.transport
        self.assertTrue(channel._waitingForTransport)
        # Held: parsing stopped (or a static file's producer paused, mid-reply), not reading.
        self.assertTrue(channel.paused or channel._handlingRequest)
        self.assertNotIn(server, reactor.getReaders())
        waiting = struct.unpack("i", fcntl.ioctl(server.socket, termios.FIONREAD, b"\0" * 4))[0]
        self.assertGreater(waiting, 0)  # requests the server has not read
        unsent = len(server.dataBuffer) - server.offset + server._tempDataLen
        oneReply = 1100
        self.assertLessEqual(unsent, server.bufferSize + MAX_PIPELINED * oneReply)
        self.assertLess(client.sent, 100_000)
        client.transport.abortConnection()  # type: ignore[union-attr]  # connected: transport is set
        yield client.closed
        yield site.closeConnections().addTimeout(10, reactor)
        self.assertEqual(site.channels, set())
        del clientPort


class SiteWiringTests(SynchronousTestCase):
    def test_siteUsesTheBoundedChannel(self) -> None:
        """makeSite's connections are BoundedHTTPChannels with the limits and clock given."""
        clock = Clock()
        limits = HTTPLimits(3, 100, 7)
        site: PushSite = makeSite(Path("."), *sevenResources(), limits, clock)
        protocol: Any = site.buildProtocol(None)
        self.assertIsInstance(protocol._channel, BoundedHTTPChannel)
        self.assertIs(protocol._channel.limits, limits)
        self.assertIs(protocol._channel.clock, clock)
