"""
Helpers for the tests that use Redis: the machine's Redis (never flushed: each test uses a key
prefix of its own and deletes its keys), a private C{redis-server} on a spare port for outage
tests, and an in-process pushsvc node (registry, Redis broker, cluster state, hub) with fake
connections whose frames a test can wait on.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import uuid
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, gatherResults, inlineCallbacks, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost, ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from pushsvc.apps import Apps
from pushsvc.fanout.registry import Outbound, Registry
from pushsvc.frames import Member
from pushsvc.hub import Hub
from pushsvc.interfaces import PushSettings
from tests.helpers import freePort, listenLocal, portOf, requireService
from tests.wsclient import PATH, WSClient, connectClient

REDIS_HOST = os.environ.get("PUSHSVC_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("PUSHSVC_TEST_REDIS_PORT", "6379"))
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def requireRedis() -> None:
    """Skip (fail under CI=true) when the machine's Redis does not answer PING."""
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=2) as s:
            s.sendall(b"PING\r\n")
            reply = s.recv(64)
    except OSError as e:
        requireService("Redis", f"is not reachable at {REDIS_HOST}:{REDIS_PORT}: {e}")
    if not reply.startswith(b"+PONG"):
        requireService("Redis", f"at {REDIS_HOST}:{REDIS_PORT} answered {reply!r} to PING")


def uniquePrefix() -> str:
    return f"pushsvc_test_{uuid.uuid4().hex[:12]}"


def deleteKeys(pattern: str, port: int = REDIS_PORT) -> None:
    """Delete the keys matching C{pattern} (SCAN + DEL; blocking, for cleanups)."""
    with socket.create_connection((REDIS_HOST, port), timeout=5) as s:
        f = s.makefile("rb")

        def call(*args: str) -> Any:
            out = f"*{len(args)}\r\n".encode()
            for a in args:
                b = a.encode()
                out += b"$%d\r\n%s\r\n" % (len(b), b)
            s.sendall(out)
            return read()

        def read() -> Any:
            line = f.readline().rstrip(b"\r\n")
            kind, rest = line[:1], line[1:]
            if kind == b"*":
                return [read() for _ in range(int(rest))]
            if kind == b"$":
                n = int(rest)
                if n < 0:
                    return None
                data = f.read(n + 2)[:-2]
                return data.decode()
            if kind == b"-":
                raise RuntimeError(rest.decode())
            return rest.decode()

        cursor = "0"
        while True:
            cursor, keys = call("SCAN", cursor, "MATCH", pattern, "COUNT", "1000")
            if keys:
                call("DEL", *keys)
            if cursor == "0":
                break


class RedisServer(ProcessProtocol):
    """A private C{redis-server} on a spare loopback port (no persistence), stopped by PID."""

    def __init__(self, port: int | None = None, debug: bool = False) -> None:
        self.port = port or freePort()
        self.debug = debug  # allow DEBUG (SLEEP) from loopback (redis-server 7 refuses it)
        self.output = b""
        self.ended: Deferred[None] | None = None
        self._ready: Deferred[None] | None = None

    def start(self) -> Deferred[None]:
        """Fires once it accepts connections."""
        if not os.path.exists(REDIS_SERVER):
            requireService("redis-server", f"is not installed at {REDIS_SERVER}")
        self.output = b""
        self.ended = Deferred()
        self._ready = Deferred()
        self._ready.addTimeout(15, reactor)
        argv = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ]
        if self.debug:
            argv += ["--enable-debug-command", "local"]
        reactor.spawnProcess(self, REDIS_SERVER, argv, env=None)
        return self._ready

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if self._ready is not None and b"Ready to accept connections" in self.output:
            d, self._ready = self._ready, None
            d.callback(None)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        if self._ready is not None:
            d, self._ready = self._ready, None
            d.errback(Exception("redis-server ended: " + self.output.decode(errors="replace")))
        if not reason.check(ProcessDone, ProcessTerminated):
            pass
        assert self.ended is not None
        self.ended.callback(None)

    def stop(self) -> Deferred[None]:
        """SIGKILL this redis-server (no shutdown save); fires once it has exited."""
        assert self.ended is not None
        if not self.ended.called and self.transport is not None:
            self.transport.signalProcess("KILL")
        return self.ended


def decodeFrame(frame: bytes) -> dict[str, Any]:
    """A server-to-client WebSocket text frame (unmasked) as a Pusher message."""
    n = frame[1] & 0x7F
    offset = 2
    if n == 126:
        offset = 4
    elif n == 127:
        offset = 10
    message: dict[str, Any] = json.loads(frame[offset:])
    data = message.get("data")
    if isinstance(data, str) and message.get("event", "").startswith("pusher"):
        try:
            message["data"] = json.loads(data)
        except ValueError:
            pass
    return message


class Conn:
    """A registry connection with no socket: frames written to it are decoded and waitable."""

    def __init__(self, appId: str, socketId: str) -> None:
        self.appId = appId
        self.socketId = socketId
        self.messages: list[dict[str, Any]] = []
        self.closed: int | None = None
        self._closeWaiters: list[Deferred[int]] = []
        self._waiters: list[tuple[str, str | None, Deferred[dict[str, Any]]]] = []
        self._seen = 0
        self.outbound: Outbound | None = Outbound(self._write, 10**7, lambda: None)

    def _write(self, frame: bytes) -> None:
        self.messages.append(decodeFrame(frame))
        self._check()

    def _check(self) -> None:
        for item in list(self._waiters):
            event, channel, d = item
            for m in self.messages:
                if m.get("event") == event and (channel is None or m.get("channel") == channel):
                    self._waiters.remove(item)
                    self.messages.remove(m)
                    d.callback(m)
                    break

    def next(
        self, event: str, channel: str | None = None, timeout: float = 10
    ) -> Deferred[dict[str, Any]]:
        """Fires with the first unclaimed message C{event} (on C{channel})."""
        d: Deferred[dict[str, Any]] = Deferred()
        self._waiters.append((event, channel, d))
        self._check()
        return d.addTimeout(timeout, reactor)

    def events(self, event: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("event") == event]

    def closeWith(self, code: int, reason: str) -> None:
        self.closed = code
        waiters, self._closeWaiters = self._closeWaiters, []
        for d in waiters:
            d.callback(code)

    def whenClosed(self, timeout: float = 10) -> Deferred[int]:
        """Fires with the close code once the node closes this connection."""
        d: Deferred[int] = Deferred()
        self._closeWaiters.append(d)
        return d.addTimeout(timeout, reactor)


class HubNode:
    """A node's connections and subscriptions through its C{hub} (set by the subclass)."""

    registry: Registry
    hub: Hub

    def connect(self, appId: str) -> Conn:
        conn = Conn(appId, self.hub.newSocketId())
        self.registry.addConnection(conn)
        return conn

    def subscribe(
        self, conn: Conn, channel: str, userId: str | None = None, info: Any = None
    ) -> Deferred[None]:
        member = Member(userId, info) if userId is not None else None
        return self.hub.subscribe(conn, channel, member)


class Node(HubNode):
    """One pushsvc process's push side, in this process: registry, Redis broker, state, hub."""

    def __init__(
        self,
        address: str,
        prefix: str,
        heartbeat: float = 0.2,
        nodeTTL: float = 1.0,
        name: str | None = None,
    ) -> None:
        from pushsvc.redis.address import parseRedisAddress
        from pushsvc.redis.broker import RedisBroker
        from pushsvc.redis.state import RedisState

        self.registry = Registry(PushSettings(), reactor)
        # name: CLIENT SETNAME prefix, so a test finds (and kills) only its own connections.
        self.broker = RedisBroker(
            parseRedisAddress(address), reactor, prefix, retryMax=0.5, name=name
        )
        self.state = RedisState(self.broker, self.registry, reactor, heartbeat, nodeTTL)
        self.hub = Hub(self.registry, self.broker, reactor, self.state)
        self._ready: list[Deferred[None]] = []

    def start(self) -> Deferred[None]:
        """Fires once the broker is healthy."""
        self.broker.start()
        self.state.start()
        return self.whenHealthy()

    def whenHealthy(self, timeout: float = 15) -> Deferred[None]:
        return self.broker.whenHealthy().addTimeout(timeout, reactor)

    @inlineCallbacks
    def stop(self, retire: bool = True) -> Any:
        if retire:
            yield self.state.stop()
        else:
            self.state._timer.stopService()
            self.state._stopped = True
        yield self.broker.stop()


class RedisTestCase(TestCase):
    """Gives each test a key prefix of its own on the machine's Redis, deleted afterwards."""

    def setUp(self) -> None:
        requireRedis()
        self.prefix = uniquePrefix()
        self._names = itertools.count(1)
        self.addCleanup(deleteKeys, self.prefix + ":*")

    @inlineCallbacks
    def node(self, address: str = REDIS_URL, **kw: Any) -> Any:
        kw.setdefault("name", f"{self.prefix}-{next(self._names)}")
        node = Node(address, self.prefix, **kw)
        self.addCleanup(node.stop)
        yield node.start()
        return node

    def nodes(self, n: int, address: str = REDIS_URL) -> Deferred[list[Node]]:
        """Fires with C{n} started nodes."""
        return gatherResults([self.node(address) for _ in range(n)])

    def listen(self, node: Node, apps: Apps) -> int:
        """
        Serve C{node}'s WebSocket side (C{/app/{key}}) on a loopback port, as the service does;
        @return: the port. Stopped (and its connections closed) at cleanup.
        """
        from pushsvc.ws.protocol import makeAppResource

        root = Resource()
        resource = makeAppResource(apps, node.hub, node.registry, reactor, PushSettings())
        root.putChild(b"app", resource)
        port = listenLocal(Site(root))
        factory = resource._factory  # type: ignore[attr-defined]  # the factory behind the resource

        @inlineCallbacks
        def stop() -> Any:
            for conn in list(factory.registry.live):
                conn.transport.abortConnection()
            yield factory.registry.whenIdle()
            yield port.stopListening()

        self.addCleanup(stop)
        return portOf(port)

    @inlineCallbacks
    def wsConnect(self, port: int, key: str, established: bool = True) -> Any:
        """Fires with a L{WSClient} connected to C{port} (aborted at cleanup)."""
        client: WSClient = yield connectClient(
            port,
            PATH.format(key=key),
            established=False,
            openHandshakeTimeout=0,
            closeHandshakeTimeout=0,
        )

        def close() -> Deferred[Any]:
            if not client.closed.called:
                client.transport.abortConnection()  # type: ignore[union-attr]  # connected: transport is set
            return client.closed

        self.addCleanup(close)
        if established:
            yield client.expect("pusher:connection_established")
        return client


class FakeRedisConnection:
    """
    The server side of one connection to L{FakeRedis}: a transport for the txredisapi protocol
    that parses its commands and answers on the clock's next turn (or holds the answers while
    the server is stalled).
    """

    def __init__(self, server: FakeRedis, protocol: Any) -> None:
        self.server = server
        self.protocol = protocol
        self.name = ""
        self.authenticated = server.password is None
        self.muted = False  # replies are dropped, as on a half-open connection
        self.connected = True
        self._buffer = b""
        self.disconnecting = False

    # -- ITransport, as far as txredisapi uses it -------------------------------------------

    def write(self, data: bytes) -> None:
        self._buffer += data
        while True:
            command, rest = _parseCommand(self._buffer)
            if command is None:
                return
            self._buffer = rest
            self.server._answer(self, self._reply(command))

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.close(Failure(ConnectionDone()))

    def abortConnection(self) -> None:
        self.close(Failure(ConnectionLost()))

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass

    def getPeer(self) -> Any:
        return IPv4Address("TCP", "127.0.0.1", 6379)

    def getHost(self) -> Any:
        return IPv4Address("TCP", "127.0.0.1", 50000)

    def close(self, why: Failure) -> None:
        """The connection ends (as CLIENT KILL would); the client hears of it next turn."""
        if not self.connected:
            return
        self.connected = False
        self.server.connections.remove(self)
        self.server.clock.callLater(0, self.protocol.connectionLost, why)

    # -- commands ----------------------------------------------------------------------------

    def _reply(self, command: list[bytes]) -> bytes:
        import hashlib

        name = command[0].upper().decode()
        self.server.commands.append(name)
        if name == "AUTH":
            if command[-1].decode() == self.server.password:
                self.authenticated = True
                return b"+OK\r\n"
            return b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
        if not self.authenticated:
            return b"-NOAUTH Authentication required.\r\n"
        if name == "CLIENT" and command[1].upper() == b"SETNAME":
            self.name = command[2].decode()
            return b"+OK\r\n"
        if name == "SCRIPT":
            sha = hashlib.sha1(command[2]).hexdigest().encode()
            return b"$40\r\n" + sha + b"\r\n"
        if name == "PING":
            return b"+PONG\r\n"
        if name in ("PUBLISH", "EVALSHA"):
            return b":0\r\n"
        if name in ("SUBSCRIBE", "UNSUBSCRIBE"):
            kind = name.lower().encode()
            return b"*3\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n:1\r\n" % (
                len(kind),
                kind,
                len(command[1]),
                command[1],
            )
        return b"+OK\r\n"


def _parseCommand(data: bytes) -> tuple[list[bytes] | None, bytes]:
    """One RESP command array from the start of C{data}, and what follows it."""
    if not data.startswith(b"*") or b"\r\n" not in data:
        return None, data
    head, rest = data.split(b"\r\n", 1)
    args = []
    for _ in range(int(head[1:])):
        if b"\r\n" not in rest:
            return None, data
        size, rest = rest.split(b"\r\n", 1)
        n = int(size[1:])
        if len(rest) < n + 2:
            return None, data
        args.append(rest[:n])
        rest = rest[n + 2 :]
    return args, rest


@implementer(IStreamClientEndpoint)
class FakeRedis:
    """
    An in-memory Redis double reached through this endpoint, driven by a
    L{twisted.internet.task.Clock}: C{password} (AUTH is checked), C{refuse} (connects fail),
    C{stall()}/C{resume()} (no answers meanwhile, as under C{DEBUG SLEEP}) and C{kill(name)}
    (C{CLIENT KILL} the connection that named itself C{name}).
    """

    def __init__(self, clock: Any, password: str | None = None) -> None:
        self.clock = clock
        self.password = password
        self.refuse = False
        self.stalled = False
        self.connections: list[FakeRedisConnection] = []
        self.commands: list[str] = []  # every command's name, in order
        self._held: list[tuple[FakeRedisConnection, bytes]] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        if self.refuse:
            return fail(ConnectionRefusedError(111, "Connection refused"))
        protocol = factory.buildProtocol(None)
        # txredisapi reads what follows a bulk reply on the next turn of the global reactor.
        protocol.callLater = self.clock.callLater
        conn = FakeRedisConnection(self, protocol)
        self.connections.append(conn)
        protocol.makeConnection(conn)
        return succeed(protocol)

    def _answer(self, conn: FakeRedisConnection, reply: bytes) -> None:
        if conn.muted:
            return
        if self.stalled:
            self._held.append((conn, reply))
        else:
            self.clock.callLater(0, self._deliver, conn, reply)

    def _deliver(self, conn: FakeRedisConnection, reply: bytes) -> None:
        if conn.connected:
            conn.protocol.dataReceived(reply)

    def stall(self) -> None:
        self.stalled = True

    def resume(self) -> None:
        """Answer everything held back, in order, on the clock's next turn."""
        self.stalled = False
        held, self._held = self._held, []
        for conn, reply in held:
            self.clock.callLater(0, self._deliver, conn, reply)

    def named(self, name: str) -> FakeRedisConnection:
        [conn] = [c for c in self.connections if c.name == name]
        return conn

    def kill(self, name: str) -> None:
        self.named(name).close(Failure(ConnectionLost("killed by CLIENT KILL")))
