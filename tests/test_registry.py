"""
The registry's fan-out: queued per connection, written from the reactor in chunks, in order.
"""

from __future__ import annotations

import socket
from collections import deque
from typing import Any

from twisted.internet import reactor, tcp
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pushsvc.fanout.registry import (
    FLUSH_CHUNK,
    MAX_QUEUED_BYTES,
    QUIET_SECONDS,
    SYNC_LIMIT,
    Outbound,
    Registry,
)
from pushsvc.frames import wsTextFrame
from pushsvc.interfaces import PushSettings
from tests.helpers import KeptConn, listenLocal, portOf


class TurnClock(Clock):
    """A clock whose L{turn} runs what is due now, as one reactor turn does (not what it adds)."""

    def turn(self) -> None:
        now = self.seconds()
        for call in [c for c in self.calls if c.getTime() <= now]:
            self.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)


def Conn(n: int) -> KeptConn:
    """A subscriber of "app" whose outbound records every write (one entry per write)."""
    return KeptConn(n, "app")


class CountTests(SynchronousTestCase):
    def test_connectionsByApp(self) -> None:
        """Open connections are counted per app as they come and go (no walk over them)."""
        registry = Registry(PushSettings(), TurnClock())
        conns = [Conn(i) for i in range(5)]
        conns[4].appId = "other"
        for c in conns:
            registry.addConnection(c)
        registry.addConnection(conns[0])  # again: still one connection
        self.assertEqual(registry.connectionsByApp, {"app": 4, "other": 1})
        for c in conns[3:]:
            registry.removeConnection(c)
        registry.removeConnection(conns[4])  # again: nothing more to forget
        self.assertEqual(registry.connectionsByApp, {"app": 3})

    def test_channelsByApp(self) -> None:
        """Occupied channels and subscriptions are counted per app as they come and go."""
        registry = Registry(PushSettings(), TurnClock())
        conns = [Conn(i) for i in range(3)]
        conns[2].appId = "other"
        for c in conns:
            registry.addConnection(c)
        registry.subscribe(conns[0], "a")
        registry.subscribe(conns[0], "a")  # again: no change
        registry.subscribe(conns[1], "a")
        registry.subscribe(conns[1], "b")
        registry.subscribe(conns[2], "a")
        self.assertEqual(registry.channelsByApp, {"app": [2, 3], "other": [1, 1]})
        registry.unsubscribe(conns[0], "a")
        registry.unsubscribe(conns[1], "b")
        registry.unsubscribe(conns[1], "b")  # again: no change
        self.assertEqual(registry.channelsByApp, {"app": [1, 1], "other": [1, 1]})
        registry.unsubscribe(conns[1], "a")
        registry.unsubscribe(conns[2], "a")
        self.assertEqual(registry.channelsByApp, {})


class FanOutTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = TurnClock()
        self.registry = Registry(PushSettings(), self.clock)
        self.subscribe(2 * FLUSH_CHUNK + 44)
        self.busy()

    def subscribe(self, n: int) -> None:
        self.conns = [Conn(i) for i in range(n)]
        for c in self.conns:
            self.registry.addConnection(c)
            self.registry.subscribe(c, "news")

    def busy(self) -> None:
        """A publish has just been written: the next ones, at this time, are queued."""
        self.registry.deliver("app", "news", b'{"warm":1}')
        self.clock.pump([0] * 20)
        self.assertEqual(self.registry._dirty, deque())
        for c in self.conns:
            c.writes.clear()
        self.registry.deliveries = 0

    def written(self) -> int:
        return sum(1 for c in self.conns if c.writes)

    def test_quietFanOutWrittenAtOnce(self) -> None:
        """
        A publish that finds the registry quiet is written before deliver() returns, up to
        SYNC_LIMIT connections; the rest are queued and written from the reactor in chunks.
        """
        self.clock.advance(QUIET_SECONDS)
        self.registry.deliver("app", "news", b'{"a":1}')
        self.assertEqual(self.written(), len(self.conns))
        self.assertEqual(self.clock.getDelayedCalls(), [])

        self.registry = Registry(PushSettings(), self.clock)
        self.subscribe(SYNC_LIMIT + 10)
        self.registry.deliver("app", "news", b'{"a":1}')
        self.assertEqual(self.written(), SYNC_LIMIT)
        self.clock.turn()
        self.assertEqual(self.written(), SYNC_LIMIT + 10)

    def test_writtenFromTheReactorInChunks(self) -> None:
        """
        deliver() writes nothing itself; each reactor turn writes the next FLUSH_CHUNK
        connections, so the network is read between chunks of a large fan-out.
        """
        self.assertEqual(self.registry.deliver("app", "news", b'{"a":1}'), len(self.conns))
        self.assertEqual(self.written(), 0)
        self.clock.turn()
        self.assertEqual(self.written(), FLUSH_CHUNK)
        self.clock.turn()
        self.assertEqual(self.written(), 2 * FLUSH_CHUNK)
        self.clock.turn()
        self.assertEqual(self.written(), len(self.conns))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        frame = wsTextFrame(b'{"a":1}')
        self.assertEqual({tuple(c.writes) for c in self.conns}, {(frame,)})
        self.assertEqual(self.registry.deliveries, len(self.conns))

    def test_laterPublishJoinsQueuedFrames(self) -> None:
        """
        A publish that arrives while a fan-out is being written goes out with the frames still
        queued, in one write per connection, after them.
        """
        a, b = wsTextFrame(b'{"a":1}'), wsTextFrame(b'{"b":2}')
        self.registry.deliver("app", "news", b'{"a":1}')
        self.clock.turn()
        self.registry.deliver("app", "news", b'{"b":2}')
        self.clock.pump([0] * 5)
        early, late = self.conns[:FLUSH_CHUNK], self.conns[FLUSH_CHUNK:]
        self.assertEqual({tuple(c.writes) for c in early}, {(a, b)})
        self.assertEqual({tuple(c.writes) for c in late}, {(a + b,)})
        self.assertEqual(self.registry.deliveries, 2 * len(self.conns))

    def test_replyGoesAfterQueuedFrames(self) -> None:
        """
        A frame written straight to one connection (a reply) takes that connection's queued
        frames with it, ahead of it; the later flush writes nothing twice.
        """
        conn = self.conns[-1]
        assert conn.outbound is not None
        self.registry.deliver("app", "news", b'{"a":1}')
        conn.outbound.send(b"reply")
        self.assertEqual(conn.writes, [wsTextFrame(b'{"a":1}') + b"reply"])
        self.clock.pump([0] * 5)
        self.assertEqual(len(conn.writes), 1)
        self.assertEqual(self.written(), len(self.conns))

    def test_deliveryMadeByAWriteGoesAfter(self) -> None:
        """
        A delivery that a write sets off while a quiet fan-out is being written (it only
        queues) reaches every connection after the frame being written, on those not yet
        written to as well.
        """
        first, nested = wsTextFrame(b'{"a":1}'), wsTextFrame(b'{"n":1}')
        trigger = self.conns[0]
        assert trigger.outbound is not None

        def write(data: bytes) -> None:
            trigger.writes.append(data)
            if len(trigger.writes) == 1:
                self.registry.deliver("app", "news", b'{"n":1}')

        trigger.outbound.write = write
        self.clock.advance(QUIET_SECONDS)
        self.registry.deliver("app", "news", b'{"a":1}')
        self.clock.pump([0] * 5)
        self.assertEqual(trigger.writes, [first, nested])
        self.assertEqual({b"".join(c.writes) for c in self.conns}, {first + nested})
        self.assertEqual(self.registry.queuedBytes, 0)

    def test_exceptSocket(self) -> None:
        """The excluded connection gets nothing, even when it has other frames queued."""
        skipped = self.conns[3]
        self.registry.deliver("app", "news", b'{"a":1}')
        self.registry.deliver("app", "news", b'{"b":2}', exceptSocketId=skipped.socketId)
        self.clock.pump([0] * 5)
        self.assertEqual(skipped.writes, [wsTextFrame(b'{"a":1}')])
        self.assertEqual(self.conns[4].writes, [wsTextFrame(b'{"a":1}') + wsTextFrame(b'{"b":2}')])

    def test_finishWritesQueuedThenNothing(self) -> None:
        """
        A connection being closed gets what was delivered before the close, then nothing more.
        """
        conn = self.conns[0]
        assert conn.outbound is not None
        self.registry.deliver("app", "news", b'{"a":1}')
        conn.outbound.finish()
        self.assertEqual(conn.writes, [wsTextFrame(b'{"a":1}')])
        self.registry.deliver("app", "news", b'{"b":2}')
        self.clock.pump([0] * 5)
        self.assertEqual(conn.writes, [wsTextFrame(b'{"a":1}')])

    def test_failingWriteIsolated(self) -> None:
        """A connection whose write raises is counted; every other one gets the frame."""
        broken: Any = self.conns[200].outbound

        def fail(data: bytes) -> None:
            raise OSError("boom")

        broken.write = fail
        self.registry.deliver("app", "news", b'{"a":1}')
        self.clock.pump([0] * 5)
        self.assertEqual(self.written(), len(self.conns) - 1)
        self.assertEqual(self.registry.deliveryFailures, 1)
        self.assertEqual(self.registry.deliveries, len(self.conns))  # queued: a counter
        self.assertEqual(self.registry.queuedBytes, 0)

    def test_backlogBounded(self) -> None:
        """
        Publishes that come faster than their fan-out is written do not grow the queue past
        MAX_QUEUED_BYTES: a delivery over it writes the backlog down first, in order.
        """
        payload = b'{"d":"' + b"x" * 4000 + b'"}'
        frame = wsTextFrame(payload)
        per = len(frame) * len(self.conns)
        n = MAX_QUEUED_BYTES // per + 5
        for _ in range(n):
            self.registry.deliver("app", "news", payload)
            self.assertLessEqual(self.registry.queuedBytes, MAX_QUEUED_BYTES + per)
        self.assertGreater(self.written(), 0)  # written without a reactor turn
        self.clock.pump([0] * 20)
        self.assertEqual({b"".join(c.writes) for c in self.conns}, {frame * n})
        self.assertEqual(self.registry.queuedBytes, 0)


class _Sink(Protocol):
    """The client end: collects what arrives; C{done} fires once C{want} bytes came."""

    def __init__(self, want: int) -> None:
        self.want = want
        self.data = bytearray()
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if len(self.data) >= self.want and not self.done.called:
            self.done.callback(bytes(self.data))


class _Served(Protocol):
    """The server end of a real TCP connection, written to through an L{Outbound}."""

    factory: _ServedFactory

    def connectionMade(self) -> None:
        self.factory.made.callback(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.lost.callback(self)


class _ServedFactory(ServerFactory):
    protocol = _Served  # type: ignore[assignment]  # typeshed wants a callable; a class is one

    def __init__(self) -> None:
        self.made: Deferred[_Served] = Deferred()
        self.lost: Deferred[_Served] = Deferred()


class DirectWriteTests(TestCase):
    """
    On a real TCP connection, frames go straight to the socket's file descriptor while the
    transport holds nothing; what the socket does not take goes through the transport, and the
    bytes on the wire are the frames, whole and in order.
    """

    timeout = 20

    def test_partialWritesKeepTheStream(self) -> Deferred[None]:
        return ensureDeferred(self._partialWrites())

    async def _partialWrites(self) -> None:
        serverFactory = _ServedFactory()
        port = listenLocal(serverFactory)
        self.addCleanup(port.stopListening)
        payloads = [b'{"n":%d,"d":"%s"}' % (i, b"x" * (3000 + 7 * i)) for i in range(400)]
        frames = [wsTextFrame(p) for p in payloads]
        sink = _Sink(sum(map(len, frames)))
        client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", portOf(port)), sink)
        client.transport.pauseProducing()  # reads nothing: the server's socket fills up
        served = await serverFactory.made
        transport = served.transport
        assert isinstance(transport, tcp.Server)
        # A small send buffer while frames are written, so that the socket soon takes only
        # part of one.
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

        clock = Clock()
        registry = Registry(PushSettings(), clock)
        conn = Conn(0)
        conn.outbound = Outbound(transport.write, 10**7, lambda: None, transport)
        transport.registerProducer(conn.outbound, True)
        registry.addConnection(conn)
        registry.subscribe(conn, "news")
        self.assertGreaterEqual(conn.outbound.fd, 0)  # the direct path is on

        clock.advance(1)
        registry.deliver("app", "news", payload := payloads[0])
        self.assertEqual(transport._tempDataLen, 0)  # straight to the socket, not the transport
        for payload in payloads[1:]:
            clock.advance(1)  # each one written at once, as under a light load
            registry.deliver("app", "news", payload)
        self.assertEqual(registry.queuedBytes, 0)
        # The socket stopped taking whole frames: the rest waits in the transport.
        self.assertTrue(transport._tempDataLen or transport.dataBuffer)
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        client.transport.resumeProducing()
        received = await sink.done
        self.assertEqual(received, b"".join(frames))

        # Once Twisted closes the socket (its number may be reused at once), nothing is
        # written to that number any more.
        client.transport.loseConnection()
        await serverFactory.lost
        self.assertEqual(conn.outbound.fd, -1)
        self.assertTrue(conn.outbound.closed)
        clock.advance(1)
        registry.deliver("app", "news", b'{"after":1}')
        self.assertEqual(registry.deliveryFailures, 0)
