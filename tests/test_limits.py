"""
Connection caps (per process, per client address, behind trusted proxies), their options, and
the accept guard that keeps a listening port quiet when file descriptors run out.
"""

from __future__ import annotations

import errno
import json
from typing import Any

from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from pushsvc.http.limits import (
    FD_RESERVE,
    OVER_ADDRESS,
    OVER_CAPACITY,
    AcceptGuard,
    ConnectionLimits,
)
from pushsvc.http.proxy import TrustedProxies
from pushsvc.http.site import JSONNotFound, PushRequest, PushSite
from pushsvc.tap import Options, makeService
from tests.helpers import captureLogs


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"hello"


class Connection:
    """One HTTP connection to a site through L{PushSite.buildProtocol}, on a StringTransport."""

    def __init__(self, site: PushSite, peer: str) -> None:
        address = IPv4Address("TCP", peer, 40000)
        self.channel = site.buildProtocol(address)
        self.transport = StringTransport(peerAddress=address)
        if self.channel is not None:
            self.channel.makeConnection(self.transport)

    @property
    def closedAtOnce(self) -> bool:
        return self.channel is None

    def get(
        self, path: str = "/", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one request; the status, headers and body of the reply."""
        self.transport.clear()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        assert self.channel is not None
        self.channel.dataReceived(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
        head, _, body = self.transport.value().partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        fields = dict(line.lower().split(": ", 1) for line in lines[1:])
        return int(lines[0].split(" ")[1]), fields, body

    def close(self) -> None:
        assert self.channel is not None
        self.channel.connectionLost(Failure(ConnectionDone()))


class SiteCase(SynchronousTestCase):
    def makeSite(self, limits: ConnectionLimits, trusted: str = "") -> PushSite:
        root = Resource()
        root.putChild(b"hello", Hello())
        root.putChild(b"app", JSONNotFound())
        site = PushSite(root)
        site.requestFactory = PushRequest
        site.reactor = Clock()
        site.limits = limits
        if trusted:
            site.trustedProxies = TrustedProxies.parse(trusted)
        site.startFactory()
        self.addCleanup(site.stopFactory)
        return site


class PerAddressCapTests(SiteCase):
    def test_nPlusOneGets503(self) -> None:
        """
        With a cap of 3 per address, the 4th connection from one address gets 503 with a JSON
        error and Connection: close; another address is not affected; once one of the first
        three is gone, a new connection from that address is served again.
        """
        site = self.makeSite(ConnectionLimits(100, 3))
        first = [Connection(site, "203.0.113.5") for _ in range(3)]
        for c in first:
            self.assertEqual(c.get("/hello")[0], 200)
        over = Connection(site, "203.0.113.5")
        code, headers, body = over.get("/hello")
        self.assertEqual(code, 503)
        self.assertEqual(json.loads(body), {"error": OVER_ADDRESS})
        self.assertEqual(headers["content-type"], "application/json; charset=utf-8")
        self.assertEqual(headers["connection"], "close")
        self.assertEqual(headers["retry-after"], "10")
        self.assertTrue(over.transport.disconnecting)
        self.assertEqual(Connection(site, "198.51.100.1").get("/hello")[0], 200)
        over.close()
        first[0].close()
        self.assertEqual(Connection(site, "203.0.113.5").get("/hello")[0], 200)
        self.assertEqual(site.limits.refused, 1)

    def test_refusalSlotsPerAddressBounded(self) -> None:
        """
        An address over its cap holds at most a few connections that wait for their 503;
        more are closed at once, so it cannot take every refusal slot.
        """
        site = self.makeSite(ConnectionLimits(100, 1, refusalSlots=50))
        Connection(site, "203.0.113.5")
        waiting = [Connection(site, "203.0.113.5") for _ in range(10)]
        self.assertEqual([c.closedAtOnce for c in waiting], [False] * 4 + [True] * 6)
        self.assertEqual(site.limits.dropped, 6)
        self.assertEqual(Connection(site, "198.51.100.1").get("/hello")[0], 200)


class ProcessCapTests(SiteCase):
    def test_globalCap(self) -> None:
        """
        Over --max-connections: 503 while refusal slots last, then closed at once; the counts
        come back as connections go.
        """
        site = self.makeSite(ConnectionLimits(2, 0, refusalSlots=1))
        a, b = Connection(site, "10.1.0.1"), Connection(site, "10.1.0.2")
        refused = Connection(site, "10.1.0.3")
        self.assertTrue(Connection(site, "10.1.0.4").closedAtOnce)
        code, _, body = refused.get("/hello")
        self.assertEqual((code, json.loads(body)), (503, {"error": OVER_CAPACITY}))
        self.assertEqual(a.get("/hello")[0], 200)
        refused.close()
        a.close()
        self.assertEqual((site.limits.open, site.limits.refusing), (1, 0))
        self.assertEqual(Connection(site, "10.1.0.5").get("/hello")[0], 200)
        b.close()

    def test_releasedOnceAtTransportLevel(self) -> None:
        """
        The count is released by the transport's connectionLost, whatever protocol holds the
        connection by then (a WebSocket), and only once.
        """
        limits = ConnectionLimits(10, 0)
        site = self.makeSite(limits)

        class Transport(StringTransport):
            protocol: IProtocol

            def connectionLost(self, reason: Failure) -> None:
                self.protocol.connectionLost(reason)

        channel = site.buildProtocol(IPv4Address("TCP", "10.1.0.1", 1))
        transport = Transport()
        channel.makeConnection(transport)
        self.assertEqual(limits.open, 1)
        transport.protocol = Protocol()  # a WebSocket took the connection over
        site.forgetChannel(channel)
        self.assertEqual(limits.open, 1)
        transport.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(limits.open, 0)
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(limits.open, 0)

    def test_derivedFromFileLimit(self) -> None:
        """0 means: the open-file limit less a reserve and the refusal slots."""
        limits = ConnectionLimits.fromFileLimit(0, 1000, 256)
        self.assertEqual(limits.maxConnections + limits.refusalSlots, 256 - FD_RESERVE)
        self.assertGreater(limits.refusalSlots, 0)
        self.assertEqual(ConnectionLimits.fromFileLimit(500, 7, 256).maxConnections, 500)
        self.assertEqual(ConnectionLimits.fromFileLimit(500, 7, 256).maxPerAddress, 7)


class TrustedProxyCapTests(SiteCase):
    def test_countedPerForwardedAddress(self) -> None:
        """
        Behind a trusted proxy the cap per address counts forwarded client addresses, per
        request: the proxy's own address is not capped, a second client is not affected, and
        the 503 leaves the proxy's connection open.
        """
        site = self.makeSite(ConnectionLimits(100, 1), trusted="10.0.0.2")
        one, two = Connection(site, "10.0.0.2"), Connection(site, "10.0.0.2")
        alice = {"X-Forwarded-For": "198.51.100.7"}
        self.assertEqual(one.get("/hello", alice)[0], 200)
        code, headers, body = two.get("/hello", alice)
        self.assertEqual((code, json.loads(body)), (503, {"error": OVER_ADDRESS}))
        self.assertNotIn("connection", headers)
        self.assertFalse(two.transport.disconnecting)
        self.assertEqual(two.get("/hello", {"X-Forwarded-For": "198.51.100.8"})[0], 200)
        # The first connection now carries another client: alice's count is free again.
        self.assertEqual(one.get("/hello", {"X-Forwarded-For": "198.51.100.9"})[0], 200)
        self.assertEqual(two.get("/hello", alice)[0], 200)
        self.assertEqual(site.limits.perAddress, {"198.51.100.9": 1, "198.51.100.7": 1})
        one.close()
        two.close()
        self.assertEqual(site.limits.perAddress, {})
        self.assertEqual(site.limits.open, 0)

    def test_spoofingUntrustedPeerCountedByPeer(self) -> None:
        """A peer that is not trusted is counted by its own address, whatever it forwards."""
        site = self.makeSite(ConnectionLimits(100, 1), trusted="10.0.0.2")
        Connection(site, "203.0.113.5").get("/hello", {"X-Forwarded-For": "1.1.1.1"})
        code = Connection(site, "203.0.113.5").get("/hello", {"X-Forwarded-For": "2.2.2.2"})[0]
        self.assertEqual(code, 503)

    def test_upgradeLeftToTheWebSocket(self) -> None:
        """An upgrade to /app/ over the cap is not answered 503: the WebSocket closes it 4100."""
        site = self.makeSite(ConnectionLimits(1, 0))
        Connection(site, "10.1.0.1")
        over = Connection(site, "10.1.0.2")
        code, _, _ = over.get("/app/key", {"Upgrade": "websocket", "Connection": "Upgrade"})
        self.assertEqual(code, 404)  # reached the resource (here a stand-in), not refused
        code, _, _ = over.get("/hello", {"Upgrade": "websocket", "Connection": "Upgrade"})
        self.assertEqual(code, 503)  # elsewhere an Upgrade header changes nothing


class OptionTests(SynchronousTestCase):
    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(list(args))
        return options

    def test_defaultsReachConfig(self) -> None:
        config = makeService(self.parse()).config  # type: ignore[attr-defined]  # makeService returns an IService; ours has it
        self.assertEqual(
            (config.maxConnections, config.maxConnectionsPerIp, config.trustedProxies),
            (0, 1000, ()),
        )

    def test_values(self) -> None:
        config = makeService(
            self.parse(  # type: ignore[attr-defined]  # makeService returns an IService; ours has it
                "--max-connections",
                "5000",
                "--max-connections-per-ip",
                "0",
                "--trusted-proxies",
                "10.0.0.0/8, 192.168.1.1",
            )
        ).config
        self.assertEqual(
            (config.maxConnections, config.maxConnectionsPerIp, config.trustedProxies),
            (5000, 0, ("192.168.1.1", "10.0.0.0/8")),
        )

    def test_badValues(self) -> None:
        """Each bad value is one line that names the option."""
        for args, text in [
            (("--max-connections", "-1"), "--max-connections must be 0"),
            (("--max-connections-per-ip", "many"), "--max-connections-per-ip must be a whole"),
            (("--trusted-proxies", "proxy.local"), "--trusted-proxies: 'proxy.local' is not"),
        ]:
            e = self.assertRaises(SystemExit, self.parse, *args)
            self.assertIn(text, str(e))
            self.assertEqual(len(str(e).splitlines()), 1)


class FDSetReactor(MemoryReactor):
    """A MemoryReactor that keeps its readers (what a tcp.Port registers itself with)."""

    def __init__(self) -> None:
        super().__init__()
        self.readers: set[Any] = set()

    def addReader(self, reader: Any) -> None:
        self.readers.add(reader)

    def removeReader(self, reader: Any) -> None:
        self.readers.discard(reader)


class Listener:
    """Stands in for a listening socket whose accept fails with C{error}."""

    def __init__(self, error: int) -> None:
        self.error = error

    def accept(self) -> Any:
        raise OSError(self.error, errno.errorcode[self.error])


class AcceptGuardTests(SynchronousTestCase):
    """
    A real twisted tcp.Port whose accept fails: what Twisted does alone, and with the guard.
    """

    def setUp(self) -> None:
        self.reactor = FDSetReactor()
        self.port = tcp.Port(
            0, Factory.forProtocol(Protocol), interface="127.0.0.1", reactor=self.reactor
        )
        self.port.startListening()
        real = self.port.socket
        self.addCleanup(real.close)
        self.events = captureLogs(self)

    def acceptFails(self, error: int) -> None:
        self.port.socket = Listener(error)

    def lines(self, text: str) -> list[dict[str, Any]]:
        return [e for e in self.events if text in str(e.get("log_format"))]

    def test_twistedAloneKeepsReading(self) -> None:
        """
        Without the guard, a port out of descriptors logs and stays registered for reading:
        with the socket still readable, the reactor calls it again at once (a busy loop).
        """
        self.acceptFails(errno.EMFILE)
        for _ in range(3):
            self.port.doRead()
        self.assertIn(self.port, self.reactor.readers)
        self.assertGreaterEqual(len(self.lines("EMFILE")) + len(self.lines("Could not accept")), 3)

    def test_pausesWithBackoff(self) -> None:
        """
        With the guard: the port stops reading for 0.1 s, then 0.2 s...; one warning for the
        episode, none of Twisted's per-attempt lines; ENFILE too; the first accept that does
        not fail ends the episode with one line and resets the back-off.
        """
        clock = Clock()
        guard = AcceptGuard(self.port, clock, lambda: "3 connections open")
        self.acceptFails(errno.EMFILE)
        self.port.doRead()
        self.assertNotIn(self.port, self.reactor.readers)
        self.assertTrue(guard.paused)
        clock.advance(0.1)
        self.assertIn(self.port, self.reactor.readers)
        self.acceptFails(errno.ENFILE)
        self.port.doRead()
        clock.advance(0.1)
        self.assertNotIn(self.port, self.reactor.readers)
        clock.advance(0.1)
        self.assertIn(self.port, self.reactor.readers)
        warnings = self.lines("cannot accept connections")
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["state"], "3 connections open")
        self.assertEqual(self.lines("EMFILE encountered") + self.lines("Could not accept"), [])
        self.assertEqual(guard.pauses, 2)

        self.acceptFails(errno.EAGAIN)
        self.port.doRead()
        self.assertIn(self.port, self.reactor.readers)
        self.assertEqual(len(self.lines("accepting connections again")), 1)
        self.assertEqual(guard.delay, guard.initialDelay)

    def test_otherEventsPassed(self) -> None:
        """Accept errors that are not about descriptors are logged as before, no pause."""
        AcceptGuard(self.port, Clock())
        self.acceptFails(errno.ECONNABORTED)
        self.port.doRead()
        self.assertIn(self.port, self.reactor.readers)
        self.assertEqual(len(self.lines("Could not accept")), 1)

    def test_stopCancels(self) -> None:
        """A stop while paused leaves no timer behind, and a closed port is not resumed."""
        clock = Clock()
        guard = AcceptGuard(self.port, clock)
        self.acceptFails(errno.EMFILE)
        self.port.doRead()
        guard.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
        guard = AcceptGuard(self.port, clock)
        self.port.doRead()
        self.port.connected = False
        clock.advance(1)
        self.assertNotIn(self.port, self.reactor.readers)

    def test_installOnlyOnPorts(self) -> None:
        self.assertIsNone(AcceptGuard.install(object(), Clock()))
        self.assertIsNotNone(AcceptGuard.install(self.port, Clock()))
