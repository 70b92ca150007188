"""
Every workaround for Autobahn's and twisted.web's ways in one place, and the keep-alive.

Autobahn keeps, per connection, much that pushsvc never reads: a send queue, the opening
handshake, ~40 option attributes, flags at their resting value, and timers left pending after
the connection is gone. L{LeanServerProtocol} drops or shares them (a connection is ~1 KiB
instead of ~3), and L{optionsOnClass} keeps a factory's options on a protocol class of its own.
The Autobahn attributes relied on here are checked once at start-up
(L{pushsvc.compat.checkPrivateAPIs}).

Keep-alive: one shared timer (L{Keepalive}) on the clock passed in sweeps the open connections;
it sends a WebSocket ping on a connection idle for C{pingInterval} and closes it with 4201 when
nothing comes back within C{pongTimeout}. Any bytes from the client count as life.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Callable, Collection
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from pushsvc.frames import CLOSE_NO_PONG

log = Logger()

AUTOBAHN_TIMERS = (
    "openHandshakeTimeoutCall",
    "closeHandshakeTimeoutCall",
    "serverConnectionDropTimeoutCall",
    "autoPingPendingCall",
    "autoPingTimeoutCall",
)

HANDSHAKE_LEFTOVERS = (
    "http_request_data",
    "http_response_data",
    "http_status_line",
    "http_headers",
    "http_request_uri",
    "http_request_path",
    "http_request_params",
    "http_request_host",
    "websocket_protocols",
    "websocket_extensions",
    "websocket_origin",
    "_wskey",
)


class _LazyQueue:
    """An empty stand-in for a connection's Autobahn send queue; the first append makes it."""

    __slots__ = ("proto",)

    def __init__(self, proto: LeanServerProtocol) -> None:
        self.proto = proto

    def __len__(self) -> int:
        return 0

    def append(self, item: Any) -> None:
        self.proto.__dict__["_sendQueue"] = deque([item])


class LeanServerProtocol(WebSocketServerProtocol):
    """An Autobahn server protocol that keeps only what a long-lived connection needs."""

    # Autobahn gives every connection a deque for chopped or synchronous writes, which pushsvc
    # never asks for: ~750 bytes per connection, empty. It is made when something is put in it.
    @property
    def send_queue(self) -> Any:
        queue = self.__dict__.get("_sendQueue")
        return queue if queue is not None else _LazyQueue(self)

    @send_queue.setter
    def send_queue(self, queue: Any) -> None:
        self.__dict__["_sendQueue"] = queue if len(queue) else None

    def cancelTimers(self) -> None:
        # Autobahn leaves some of its timers pending after the connection is gone.
        for name in AUTOBAHN_TIMERS:
            call = getattr(self, name, None)
            if call is not None:
                setattr(self, name, None)
                try:
                    call.cancel()
                except Exception:
                    pass  # it already ran

    def forgetHandshake(self) -> None:
        # Autobahn keeps the opening handshake (request bytes, headers, response) for the life of
        # the connection; nothing reads it after onOpen. Dropping it saves ~1 KiB per connection.
        for name in HANDSHAKE_LEFTOVERS:
            if name in self.__dict__:
                setattr(self, name, None)
        self._compact()

    def _compact(self) -> None:
        """
        Let the class hold the attributes that are None, False or 0 on every open connection.

        Autobahn gives each connection ~60 attributes; some 40 of them are flags and timers at
        their resting value until the connection closes. Stored once on the (per-factory)
        class, reads find the same value and a write makes an instance attribute again as
        before; the instance dict, rebuilt for what is left, shrinks from ~1.6 KiB to ~0.6.
        """
        cls = type(self)
        d = self.__dict__
        for name, value in list(d.items()):
            if not (value is None or value is False or (type(value) is int and value == 0)):
                continue
            if not hasattr(cls, name):
                setattr(cls, name, value)
            if getattr(cls, name) is value:
                del d[name]
        self.__dict__ = dict(d)


def optionsOnClass(
    factory: WebSocketServerFactory, base: type[WebSocketServerProtocol]
) -> type[WebSocketServerProtocol]:
    """
    A subclass of C{base} holding C{factory}'s options as class attributes: Autobahn copies every
    option it finds missing onto each connection (~40 instance attributes, a dict twice the
    size); present on the class, they are stored once.
    """
    options = {name: getattr(factory, name) for name in base.CONFIG_ATTRS}
    for name, value in options.items():
        if inspect.isfunction(value):
            # e.g. perMessageCompressionAccept: a plain function, not a method of the class
            options[name] = staticmethod(value)
    return type(base.__name__, (base,), options)


def takeProducer(transport: Any, producer: IPushProducer) -> None:
    """
    Register C{producer} as C{transport}'s streaming producer, in place of twisted.web's
    HTTPChannel, which is still registered after the WebSocket upgrade.
    """
    try:
        transport.unregisterProducer()
    except RuntimeError:
        pass  # nothing was registered (a plain TCP server, a test transport)
    transport.registerProducer(producer, True)


class Keepalive:
    """
    One timer for the open connections of a factory: pings idle connections, closes dead ones.
    It sweeps C{connections()} (the registry's record of open connections: there is no second
    one here) and runs only while there are connections: L{wake} when one opens, L{rest} when
    one closes.
    """

    def __init__(
        self,
        clock: IReactorTime,
        pingInterval: float,
        pongTimeout: float,
        connections: Callable[[], Collection[Any]],
    ) -> None:
        self.clock = clock
        self.pingInterval = pingInterval
        self.pongTimeout = pongTimeout
        self.connections = connections
        self._loop = LoopingCall(self.sweep)
        self._loop.clock = clock

    @property
    def tick(self) -> float:
        return max(0.05, min(self.pingInterval, self.pongTimeout) / 2)

    def wake(self) -> None:
        """A connection opened: run the timer."""
        if not self._loop.running:
            self._loop.start(self.tick, now=False)

    def rest(self) -> None:
        """A connection closed: stop the timer if none is left."""
        if not self.connections() and self._loop.running:
            self._loop.stop()

    def sweep(self) -> None:
        now = self.clock.seconds()
        for conn in list(self.connections()):
            sentAt = conn.pingSentAt
            if sentAt is not None:
                if conn.lastSeen >= sentAt:
                    conn.pingSentAt = None
                elif now - sentAt >= self.pongTimeout:
                    conn.closeWith(CLOSE_NO_PONG, "no answer to ping")
                    continue
            if conn.pingSentAt is None and now - conn.lastSeen >= self.pingInterval:
                conn.pingSentAt = now
                try:
                    conn.sendPing()
                except Exception:
                    log.failure("pinging {socketId}", socketId=conn.socketId)
