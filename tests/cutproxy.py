"""
A loopback TCP proxy that a test can cut: the network between a client and a server going away
and coming back. Two flavours of one idea: L{CuttableProxy} runs on the reactor (trial tests,
e.g. PostgreSQL outages); L{BlockingCuttableProxy} runs on threads, for the blocking browser
tests, during which no reactor runs.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from tests.helpers import listenLocal


class _Onward(ClientFactory):
    """Connects a L{_Pipe}'s other end; when it cannot, the accepted end is closed."""

    def __init__(self, build: Callable[[], _Pipe], accepted: _Pipe) -> None:
        self.build = build
        self.accepted = accepted

    def buildProtocol(self, addr: IAddress | None) -> _Pipe:
        return self.build()

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        if self.accepted.transport is not None:
            self.accepted.transport.loseConnection()


class _Pipe(Protocol):
    """One side of a proxied connection: writes what it reads to its peer."""

    def __init__(self, proxy: CuttableProxy, peer: _Pipe | None = None) -> None:
        self.proxy = proxy
        self.peer = peer

    def connectionMade(self) -> None:
        self.proxy.live.add(self)
        if self.peer is None:
            # Accepted: read nothing until the onward connection is up.
            self.transport.pauseProducing()  # type: ignore[union-attr]  # connected: transport is set
            onward = _Onward(lambda: _Pipe(self.proxy, self), self)
            reactor.connectTCP(self.proxy.host, self.proxy.port, onward)
        elif self.peer in self.proxy.live:
            self.peer.peer = self
            self.peer.transport.resumeProducing()  # type: ignore[union-attr]  # connected: transport is set
        else:
            self.transport.loseConnection()  # type: ignore[union-attr]  # connected: transport is set

    def dataReceived(self, data: bytes) -> None:
        assert self.peer is not None
        self.peer.transport.write(data)  # type: ignore[union-attr]  # connected: transport is set

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.proxy.live.discard(self)
        if self.peer is not None:
            self.peer.transport.loseConnection()  # type: ignore[union-attr]  # connected: transport is set
        self.proxy.checkIdle()


class CuttableProxy:
    """A TCP proxy on a spare 127.0.0.1 port to the PostgreSQL server, that we can cut."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.live: set[_Pipe] = set()
        self.listening: Any = None
        self.listenPort = 0
        self._idleWaiters: list[Deferred[None]] = []

    def start(self) -> None:
        factory = Factory.forProtocol(lambda: _Pipe(self))
        self.listening = listenLocal(factory, self.listenPort)
        self.listenPort = self.listening.getHost().port

    def dropConnections(self) -> Deferred[None]:
        """Abort every proxied connection, as a crashed server or network would."""
        for pipe in list(self.live):
            pipe.transport.abortConnection()  # type: ignore[union-attr]  # connected: transport is set
        d: Deferred[None] = Deferred()
        self._idleWaiters.append(d)
        self.checkIdle()
        return d

    def checkIdle(self) -> None:
        if not self.live:
            waiters, self._idleWaiters = self._idleWaiters, []
            for d in waiters:
                d.callback(None)

    def cut(self) -> Deferred[Any]:
        """Stop accepting (new connections are refused) and drop the open ones."""
        listening, self.listening = self.listening, None
        stopped = listening.stopListening() if listening is not None else succeed(None)
        return gatherResults([stopped, self.dropConnections()])


class BlockingCuttableProxy:
    """
    A loopback TCP proxy to C{targetPort}. C{cut()} drops every connection and refuses new ones
    (connections are reset) until C{restore()}: the network of one page going away and back.
    """

    def __init__(self, targetPort: int) -> None:
        self.targetPort = targetPort
        self.port = 0  # bound by start()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._open = False
        self._listener: socket.socket | None = None

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._open = True
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                if not self._open:
                    client.close()
                    continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.targetPort), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            with self._lock:
                self._sockets.discard(source)
                self._sockets.discard(sink)

    def cut(self) -> None:
        with self._lock:
            self._open = False
            sockets = list(self._sockets)
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def restore(self) -> None:
        with self._lock:
            self._open = True

    def close(self) -> None:
        self.cut()
        if self._listener is not None:
            self._listener.close()
