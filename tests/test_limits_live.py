"""
Connection caps and file-descriptor exhaustion on real loopback sockets: WebSockets over the
cap are closed with 4100, and a twistd whose open-file limit is 256 stays responsive, quiet and
cool however many connections arrive.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from pushsvc.http.limits import ConnectionLimits
from pushsvc.service import PushService, ServiceConfig
from tests.helpers import portOf
from tests.procs import TwistdProcess, killIfRunning, startTwistd
from tests.wsclient import PATH, WSClient, connectClient

APP_ID, APP_KEY, SECRET = "77", "caps-key", "caps-secret"
FD_LIMIT = 256
LOW_FD_LIMIT = f"import resource; resource.setrlimit(resource.RLIMIT_NOFILE, ({FD_LIMIT},) * 2)"


def httpClient() -> HTTPClient:
    return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


def whenCounts(limits: ConnectionLimits, ready: Callable[[], bool]) -> Deferred[None]:
    """Fires once C{ready()} holds after a connection of C{limits} was released."""
    d: Deferred[None] = Deferred()
    release = limits.release

    def released(slot: Any) -> None:
        release(slot)
        if ready() and not d.called:
            del limits.release
            d.callback(None)

    limits.release = released  # type: ignore[method-assign]  # replaced for this test
    return d.addTimeout(10, reactor)


class WebSocketCapTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]  # trial waits on a Deferred
        config = ServiceConfig(
            listen=("tcp:0:interface=127.0.0.1",),
            dataDir=Path(self.mktemp()),
            appId=APP_ID,
            appKey=APP_KEY,
            environ={"PUSHSVC_APP_SECRET": SECRET},
            maxConnectionsPerIp=2,
        )
        self.service = PushService(config, reactor)
        self.service.startService()
        self.port = portOf(self.service.ports[0])
        self.clients: list[WSClient] = []
        self.addCleanup(self.stop)
        yield self.service.whenReady()

    @inlineCallbacks
    def stop(self) -> Any:
        if self.service.running:
            yield self.service.stopService()
        for c in self.clients:
            if not c.closed.called:
                c.transport.abortConnection()  # type: ignore[union-attr]  # connected: transport is set
            yield c.closed

    @inlineCallbacks
    def connect(self, established: bool = True) -> Any:
        client = yield connectClient(self.port, PATH.format(key=APP_KEY), established=False)
        self.clients.append(client)
        if established:
            yield client.expect("pusher:connection_established")
        return client

    @inlineCallbacks
    def test_overCapClosedWith4100(self) -> Any:
        """
        With two connections per address allowed: two WebSockets are established; an HTTP
        request meanwhile gets 503 (HTTP and WebSocket count together, and a WebSocket keeps its
        count after taking the connection over); a third WebSocket completes its handshake, gets
        a pusher:error 4100 and the close code 4100; once one of the first two is gone, a new
        one is established.
        """
        limits = self.service.site.limits
        a = yield self.connect()
        yield self.connect()
        self.assertEqual(limits.perAddress, {"127.0.0.1": 2})
        response = yield httpClient().get(f"http://127.0.0.1:{self.port}/healthz")
        self.assertEqual(response.code, 503)
        self.assertIn("Too many connections", (yield response.json())["error"])

        third = yield self.connect(established=False)
        code = yield third.closed
        self.assertEqual(code, 4100)
        self.assertEqual([m["data"]["code"] for m in third.matching("pusher:error")], [4100])
        self.assertEqual(third.matching("pusher:connection_established"), [])

        gone = whenCounts(limits, lambda: limits.perAddress.get("127.0.0.1") == 1)
        a.sendClose(1000)
        yield gone
        yield self.connect()
        self.assertEqual(limits.perAddress, {"127.0.0.1": 2})
        self.assertEqual(limits.refused, 2)


class Knock(Protocol):
    """
    One raw connection: sends C{request} (if any) and records the reply. C{done} fires with the
    status code once a whole reply came, or None when the server closed without one.
    """

    def __init__(self, request: bytes = b"") -> None:
        self.request = request
        self.data = b""
        self.body = b""
        self.done: Deferred[int | None] = Deferred()

    def connectionMade(self) -> None:
        if self.request:
            self.transport.write(self.request)  # type: ignore[union-attr]  # connected: transport is set

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        head, sep, body = self.data.partition(b"\r\n\r\n")
        match = re.search(rb"(?i)content-length: *(\d+)", head)
        if sep and match and len(body) >= int(match.group(1)) and not self.done.called:
            self.body = body
            self.done.callback(int(head.split(b" ")[1]))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            self.done.callback(None)


def cpuSeconds(pid: int) -> float:
    """User plus system CPU time of process C{pid} so far (from /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class FileLimitTests(TestCase):
    """A real twistd with RLIMIT_NOFILE at 256 (soft and hard), from 127.0.0.1 only."""

    timeout = 120

    def setUp(self) -> None:
        if not os.path.exists(f"/proc/{os.getpid()}/stat"):
            self.skipTest("needs /proc to read the server's CPU time")

    @inlineCallbacks
    def start(self, *args: str) -> Any:
        proto = startTwistd(
            [
                "--listen",
                # A backlog that holds every test connection: with Twisted's default of 50 the
                # kernel drops the SYNs past it and the clients retry in waves 1, 3, 7 s apart,
                # so whether 400 idle connections ever coexist within the 10 s header deadline
                # (and exhaust the descriptors) would depend on how fast the waves come.
                "tcp:0:interface=127.0.0.1:backlog=1024",
                "--data-dir",
                self.mktemp(),
                *args,
            ],
            setup=LOW_FD_LIMIT,
        )
        self.addCleanup(killIfRunning, proto)
        yield proto.waitFor("message store ready")
        self.portNumber = yield proto.whenListening()
        return proto

    def knock(self, request: bytes = b"") -> tuple[Deferred[Any], Knock]:
        """Open one connection; the connect Deferred and the protocol."""
        knock = Knock(request)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.portNumber, timeout=60)
        connecting = connectProtocol(endpoint, knock)
        connecting.addErrback(lambda f: None)  # refused or cancelled: no connection to close
        self.addCleanup(self.hangUp, connecting, knock)
        return connecting, knock

    @staticmethod
    def hangUp(connecting: Deferred[Any], knock: Knock) -> Any:
        if not connecting.called:
            connecting.cancel()
            return None
        if knock.transport is not None and not knock.done.called:
            knock.transport.abortConnection()  # type: ignore[attr-defined]  # connected: transport is set
            return knock.done
        return None

    @inlineCallbacks
    def fresh(self) -> Any:
        response = (
            yield httpClient()
            .get(f"http://127.0.0.1:{self.portNumber}/healthz")
            .addTimeout(20, reactor)
        )
        return response.code

    @inlineCallbacks
    def test_derivedCapRefusesBeforeFdsRunOut(self) -> Any:
        """
        With no --max-connections the cap comes from the open-file limit (logged): of 300
        connections that each send a request, exactly the cap is served, some more get 503 with
        a JSON error, the rest are closed at once; accept never fails (no EMFILE); afterwards a
        fresh request succeeds.
        """
        proto: TwistdProcess = yield self.start()
        self.assertIn(b"open-file limit: 256", proto.output)
        found = re.search(rb"at most (\d+) connections \(the open-file limit 256", proto.output)
        assert found is not None, proto.output
        cap = int(found.group(1))
        self.assertLess(cap, FD_LIMIT)
        knocks = [self.knock(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")[1] for _ in range(300)]
        results = yield DeferredList([k.done for k in knocks]).addTimeout(60, reactor)
        codes = [code for _, code in results]
        self.assertEqual(codes.count(404), cap)
        self.assertGreater(codes.count(503), 0)
        self.assertEqual(codes.count(404) + codes.count(503) + codes.count(None), 300)
        refused = next(k for k in knocks if k.done.result == 503)
        self.assertIn(b'{"error":"The server is at its connection limit', refused.body)
        self.assertNotIn(b"EMFILE", proto.output)
        self.assertNotIn(b"cannot accept connections", proto.output)
        for k in knocks:
            if k.transport is not None:
                k.transport.loseConnection()
        self.assertEqual((yield self.fresh()), 200)

    @inlineCallbacks
    def test_exhaustedFdsPauseAccepting(self) -> Any:
        """
        With --max-connections far above the open-file limit, 400 idle connections exhaust the
        descriptors: the server says so once and pauses accepting. While more connections keep
        arriving for 3 s it uses little CPU (a spinning reactor would use most of those 3 s)
        and its log does not grow; once the clients leave, a fresh request succeeds and the
        server logs that it accepts again.
        """
        proto: TwistdProcess = yield self.start(
            "--max-connections", "100000", "--max-connections-per-ip", "0"
        )
        pid = proto.transport.pid  # type: ignore[union-attr]  # connected: transport is set
        knocks = [self.knock() for _ in range(400)]
        yield proto.waitFor("cannot accept connections (EMFILE", timeout=30)
        cpuBefore, linesBefore = cpuSeconds(pid), proto.output.count(b"\n")

        def knockAgain() -> None:  # 30 more connections, one every 0.1 s
            knocks.append(self.knock())
            if len(knocks) == 430:
                loop.stop()

        loop = LoopingCall(knockAgain)
        yield loop.start(0.1)

        cpu = cpuSeconds(pid) - cpuBefore
        lines = proto.output.count(b"\n") - linesBefore
        self.assertLess(cpu, 0.6, f"{cpu:.2f}s of CPU in 3 s while out of descriptors")
        self.assertLess(lines, 10, proto.output[-3000:].decode(errors="replace"))
        self.assertNotIn(b"Traceback", proto.output)

        for connecting, knock in knocks:
            self.hangUp(connecting, knock)
        self.assertEqual((yield self.fresh()), 200)
        yield proto.waitFor("accepting connections again", timeout=20)
