"""
Every workaround for Autobahn's and twisted.web's ways in one place, and the keep-alive.

Autobahn keeps, per connection, much that pushsvc never reads: a send queue, the opening
handshake, ~40 option attributes, flags at their resting value, and timers left pending after
the connection is gone. L{LeanServerProtocol} drops or shares them (a connection is ~1 KiB
instead of ~3), and L{optionsOnClass} keeps a factory's options on a protocol class of its own.
The Autobahn attributes relied on here are checked once at start-up
(L{pushsvc.compat.checkPrivateAPIs}).

Keep-alive: one shared timer (L{Keepalive}) on the clock passed in, a timing wheel of the open
connections by deadline; it sends a WebSocket ping on a connection idle for C{pingInterval}
(a bounded number per tick, spread) and closes it with 4201 when nothing comes back within
C{pongTimeout}. Any bytes from the client count as life.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Callable, Collection
from math import ceil
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import TrafficStats
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

    trafficStats = TrafficStats()  # shared by open connections (see forgetHandshake)

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

    def forgetFutures(self) -> None:
        """
        The connection is gone: drop Autobahn's C{is_open} and C{is_closed}. The latter fires with
        the protocol itself, a cycle that only the collector would free (with the transport and
        Autobahn's per-connection objects, ~20 objects a connection); nothing here waits on them.
        """
        d = self.__dict__
        d.pop("is_closed", None)
        d.pop("is_open", None)

    def forgetHandshake(self) -> None:
        # Autobahn keeps the opening handshake (request bytes, headers, response) for the life of
        # the connection; nothing reads it after onOpen. Dropping it saves ~1 KiB per connection.
        for name in HANDSHAKE_LEFTOVERS:
            if name in self.__dict__:
                setattr(self, name, None)
        # Autobahn's byte and frame counters of this connection, which nothing reads: every
        # open connection adds to the one of its class instead (~0.5 KiB each).
        self.__dict__.pop("trafficStats", None)
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
    Pings idle connections and closes dead ones, a bounded slice per tick, whatever the number
    of connections.

    A timing wheel: each open connection is filed under the tick at which it is next due a look
    (its last sign of life + C{pingInterval}, or its ping + C{pongTimeout}), so a tick looks only
    at the connections due then. Signs of life do not move a connection (C{dataReceived} only
    sets C{lastSeen}); when its tick comes and it was heard from meanwhile, it is filed again
    under C{lastSeen + pingInterval}. Pings are sent at most L{budget} per tick (the share of one
    tick: the connections times C{tick / pingInterval}): connections that opened in one burst are
    pinged spread over the interval after their deadline (at most one interval late) instead of
    in one tick, and their deadlines stay spread from then on. A connection whose ping goes
    unanswered for C{pongTimeout} is closed with 4201 at its tick (on time, not budgeted: its
    ping was already spread). The timer runs only while there are connections: L{wake} when one
    opens (it is filed), L{rest} when one closes (it is taken out).
    """

    def __init__(
        self,
        clock: IReactorTime,
        pingInterval: float,
        pongTimeout: float,
        connections: Callable[[], Collection[Any]],
        tick: float | None = None,
    ) -> None:
        self.clock = clock
        self.pingInterval = pingInterval
        self.pongTimeout = pongTimeout
        self.connections = connections
        self.tick = tick if tick is not None else defaultTick(pingInterval, pongTimeout)
        self._slots: dict[int, set[Any]] = {}  # tick number -> connections due a look then
        self._slotOf: dict[Any, int] = {}  # connection -> its tick number
        self._toPing: deque[Any] = deque()  # due a ping, over an earlier tick's budget
        self._done = -1  # the last tick number looked at
        self._rate = 0  # pings a tick while a backlog drains
        self._loop = LoopingCall(self.sweep)
        self._loop.clock = clock

    @property
    def budget(self) -> int:
        """Pings one tick may send: its share of the connections, and never fewer than 16."""
        return max(MIN_PINGS_PER_TICK, ceil(len(self._slotOf) * self.tick / self.pingInterval))

    def _slotFor(self, when: float) -> int:
        # The first tick at or after `when` (a tick numbered n runs at n * tick).
        return max(ceil(when / self.tick - 1e-9), self._done + 1)

    def _file(self, conn: Any, when: float) -> None:
        slot = self._slotFor(when)
        self._slotOf[conn] = slot
        bucket = self._slots.get(slot)
        if bucket is None:
            bucket = self._slots[slot] = set()
        bucket.add(conn)

    def wake(self, conn: Any = None) -> None:
        """A connection opened: file it (its C{lastSeen} is set), and run the timer."""
        if conn is not None and conn not in self._slotOf:
            if self._done < 0:
                self._done = int(self.clock.seconds() / self.tick)
            self._file(conn, conn.lastSeen + self.pingInterval)
        if not self._loop.running:
            self._loop.start(self.tick, now=False)

    def rest(self, conn: Any = None) -> None:
        """A connection closed: forget it; stop the timer if none is left."""
        if conn is not None:
            slot = self._slotOf.pop(conn, None)
            if slot is not None:
                bucket = self._slots.get(slot)
                if bucket is not None:
                    bucket.discard(conn)
                    if not bucket:
                        del self._slots[slot]
        if not self._slotOf and not self.connections() and self._loop.running:
            self._loop.stop()
            self._toPing.clear()
            self._slots.clear()
            self._done = -1
            self._rate = 0

    def sweep(self) -> None:
        """One tick: look at the connections due now; ping at most L{budget} of them."""
        now = self.clock.seconds()
        last = int(now / self.tick + 1e-9)
        slots = self._slots
        slotOf = self._slotOf
        toPing = self._toPing
        for slot in range(self._done + 1, last + 1):
            self._done = slot  # from here on, a connection is filed under a later tick
            bucket = slots.pop(slot, None)
            if bucket is None:
                continue
            for conn in bucket:
                del slotOf[conn]
                sentAt = conn.pingSentAt
                if sentAt is not None:
                    if conn.lastSeen >= sentAt:
                        conn.pingSentAt = None  # it answered (or said something)
                    elif now - sentAt >= self.pongTimeout - 1e-9:
                        conn.closeWith(CLOSE_NO_PONG, "no answer to ping")
                        continue
                    else:  # not due yet (filed early): look again when it is
                        self._file(conn, sentAt + self.pongTimeout)
                        continue
                if now - conn.lastSeen >= self.pingInterval - 1e-9:
                    toPing.append(conn)
                    slotOf[conn] = -1  # waiting for its ping, in no slot
                else:
                    self._file(conn, conn.lastSeen + self.pingInterval)
        self._done = max(self._done, last)
        # A backlog drains within one interval of its peak, even as connections close meanwhile.
        if toPing:
            self._rate = max(self._rate, ceil(len(toPing) * self.tick / self.pingInterval))
        n = max(self.budget, self._rate)
        while toPing and n:
            conn = toPing.popleft()
            if slotOf.get(conn) != -1:
                continue  # closed meanwhile
            n -= 1
            del slotOf[conn]
            if now - conn.lastSeen < self.pingInterval - 1e-9:
                self._file(conn, conn.lastSeen + self.pingInterval)  # heard from meanwhile
                continue
            conn.pingSentAt = now
            self._file(conn, now + self.pongTimeout)
            try:
                conn.sendPing()
            except Exception:
                log.failure("pinging {socketId}", socketId=conn.socketId)
        if not toPing:
            self._rate = 0


def defaultTick(pingInterval: float, pongTimeout: float) -> float:
    """
    A tick of the keep-alive: 50 ms (600 ticks in the default 30 s interval, so 100,000
    connections make ~170 pings a tick, and their pongs come back together), or less when
    the intervals are under a second.
    """
    return min(0.05, min(pingInterval, pongTimeout) / 20)


MIN_PINGS_PER_TICK = 16
