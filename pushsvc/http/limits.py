"""
Connection caps and the open-file limit.

Every TCP connection the site accepts holds a L{Slot} until the connection is really lost (also
after a WebSocket took it over). A connection is admitted when the process holds fewer than
C{maxConnections} and its client address fewer than C{maxPerAddress}; otherwise it is admitted
only to be refused politely -- its HTTP requests get 503 with a JSON body, its WebSocket
handshake completes and is closed with 4100, so pusher-js backs off -- in one of a few
C{refusalSlots}; when those are taken too, it is closed at once (no reply: the cheapest refusal,
and the only one that cannot be turned into a way to hold file descriptors).

With C{maxConnections} 0 the cap is derived from the open-file limit: the soft limit (raised to
the hard one at start by L{raiseOpenFileLimit}) minus L{FD_RESERVE} for the store, Redis, logs,
listening sockets and the reactor, minus the refusal slots.

When file descriptors run out anyway, L{AcceptGuard} stops a listening port from reading for a
short back-off instead of letting it retry (and log) in a loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

log = Logger()

FD_RESERVE = 64
MIN_REFUSAL_SLOTS = 16
MAX_REFUSAL_SLOTS = 1024
REFUSALS_PER_ADDRESS = 4  # one address cannot take every refusal slot
OVER_CAPACITY = "The server is at its connection limit: try again later."
OVER_ADDRESS = "Too many connections from your address: try again later."


class Slot:
    """
    One accepted connection's hold on the counts. Installed as its transport's
    C{connectionLost}, so the count is released when the TCP connection is really lost,
    whichever protocol (HTTP, WebSocket) holds it by then.
    """

    __slots__ = ("limits", "address", "refusal", "proxied", "lost")

    def __init__(
        self, limits: ConnectionLimits, address: str | None, refusal: str | None, proxied: bool
    ) -> None:
        self.limits: ConnectionLimits | None = limits  # None once released
        self.address = address  # counted under this address (None: not counted per address)
        self.refusal = refusal  # why every request on it is refused, or None
        self.proxied = proxied  # the peer is a trusted proxy: count per request instead
        self.lost: Callable[[Any], None] | None = None

    def attach(self, transport: Any) -> None:
        """
        Release this slot when C{transport} is lost (wraps its C{connectionLost} once). A
        transport without one (a test double) leaves it to the protocol's C{connectionLost}.
        """
        lost = getattr(transport, "connectionLost", None)
        if lost is not None:
            self.lost = lost
            transport.connectionLost = self

    def __call__(self, reason: Any) -> None:
        lost, self.lost = self.lost, None  # also breaks the transport <-> slot cycle
        try:
            if lost is not None:
                lost(reason)
        finally:
            if self.limits is not None:
                self.limits.release(self)


def refusalSlotsFor(connections: int) -> int:
    return min(MAX_REFUSAL_SLOTS, max(MIN_REFUSAL_SLOTS, connections // 64))


class ConnectionLimits:
    """The counts and caps of one site's connections (see the module docstring)."""

    def __init__(
        self, maxConnections: int, maxPerAddress: int, refusalSlots: int | None = None
    ) -> None:
        self.maxConnections = maxConnections
        self.maxPerAddress = maxPerAddress  # 0: no cap per address
        self.refusalSlots = (
            refusalSlotsFor(maxConnections) if refusalSlots is None else refusalSlots
        )
        self.open = 0  # admitted connections
        self.refusing = 0  # connections held only to be refused with a reply
        self.perAddress: dict[str, int] = {}
        self.refusingPerAddress: dict[str, int] = {}
        self.refused = 0  # requests and handshakes refused with 503 / 4100
        self.dropped = 0  # connections closed at once

    @classmethod
    def fromFileLimit(
        cls, maxConnections: int, maxPerAddress: int, fileLimit: int | None
    ) -> ConnectionLimits:
        """
        C{maxConnections}, or when it is 0 the most the open-file limit C{fileLimit} affords
        (no cap without a known limit).
        """
        if maxConnections:
            return cls(maxConnections, maxPerAddress)
        if fileLimit is None:
            return cls(2**31 - 1, maxPerAddress, MAX_REFUSAL_SLOTS)
        available = max(2, fileLimit - FD_RESERVE)
        slots = max(1, min(refusalSlotsFor(available), available // 4))
        return cls(available - slots, maxPerAddress, slots)

    def admit(self, address: str | None, proxied: bool = False) -> Slot | None:
        """
        A slot for a new connection from C{address} (None: counted in all only, e.g. a
        trusted proxy); None when it is to be closed at once.
        """
        if proxied:
            address = None
        over = (
            address is not None
            and self.maxPerAddress
            and (self.perAddress.get(address, 0) >= self.maxPerAddress)
        )
        if self.open < self.maxConnections and not over:
            self.open += 1
            if address is not None:
                self.perAddress[address] = self.perAddress.get(address, 0) + 1
            return Slot(self, address, None, proxied)
        if self.refusing >= self.refusalSlots or (
            address is not None and self.refusingPerAddress.get(address, 0) >= REFUSALS_PER_ADDRESS
        ):
            self.dropped += 1
            return None
        self.refusing += 1
        if address is not None:
            self.refusingPerAddress[address] = self.refusingPerAddress.get(address, 0) + 1
        return Slot(self, address, OVER_ADDRESS if over else OVER_CAPACITY, proxied)

    def release(self, slot: Slot) -> None:
        """C{slot}'s connection is gone."""
        if slot.limits is not self:
            return  # released already
        slot.limits = None
        if slot.refusal is None:
            self.open -= 1
            counts = self.perAddress
        else:
            self.refusing -= 1
            counts = self.refusingPerAddress
        if slot.address is not None:
            self._uncount(counts, slot.address)

    def countUnder(self, slot: Slot, address: str) -> bool:
        """
        Count C{slot}'s connection (a trusted proxy's) under the forwarded C{address} from now
        on instead of the one it was counted under; False, leaving it uncounted, when
        C{address} is at its cap.
        """
        if slot.address == address:
            return True
        if slot.address is not None:
            self._uncount(self.perAddress, slot.address)
            slot.address = None
        n = self.perAddress.get(address, 0)
        if self.maxPerAddress and n >= self.maxPerAddress:
            self.refused += 1
            return False
        self.perAddress[address] = n + 1
        slot.address = address
        return True

    @staticmethod
    def _uncount(counts: dict[str, int], address: str) -> None:
        n = counts.get(address, 0) - 1
        if n > 0:
            counts[address] = n
        else:
            counts.pop(address, None)

    def metrics(self) -> list[tuple[str, str, str, float]]:
        return [
            ("pushsvc_connections_open", "TCP connections admitted and open", "gauge", self.open),
            (
                "pushsvc_connections_max",
                "The cap on admitted TCP connections",
                "gauge",
                self.maxConnections,
            ),
            (
                "pushsvc_connections_refused_total",
                "Requests and WebSocket handshakes refused over a connection cap (503 / 4100)",
                "counter",
                self.refused,
            ),
            (
                "pushsvc_connections_dropped_total",
                "Connections closed at once, over a cap with no refusal slot left",
                "counter",
                self.dropped,
            ),
        ]


def raiseOpenFileLimit() -> int | None:
    """
    Raise the soft open-file limit (RLIMIT_NOFILE) to the hard one and log the figure.
    Returns the soft limit now in force; None where there is no such limit.
    """
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            log.warn(
                "cannot raise the open-file limit from {soft} to {hard}: {error}",
                soft=soft,
                hard=hard,
                error=e,
            )
    if soft == resource.RLIM_INFINITY:
        return None
    log.info("open-file limit: {soft}", soft=soft)
    return int(soft)


# The accept errors that mean "no file descriptor (or memory) for a new socket".
_EXHAUSTED = frozenset(("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM"))


class AcceptGuard:
    """
    Keeps a listening port from spinning when file descriptors run out.

    On C{EMFILE} Twisted's C{tcp.Port.doRead} frees a reserved descriptor to accept and close
    the waiting connections, logging a line for each; when that reserve is gone too it logs one
    line and returns with the listening socket still readable, so the reactor calls it again at
    once: 100% CPU and a log line per loop. The guard takes the port's accept log events: on
    such an error it stops the port reading for a back-off (doubling from C{initialDelay} to
    C{maxDelay}, on C{clock}) while the kernel queues new connections; one warning starts such
    an episode and one line ends it.
    """

    def __init__(
        self,
        port: Any,
        clock: IReactorTime,
        describe: Callable[[], str] = str,
        initialDelay: float = 0.1,
        maxDelay: float = 1.0,
    ) -> None:
        self.port = port
        self.clock = clock
        self.describe = describe
        self.initialDelay = initialDelay
        self.maxDelay = maxDelay
        self.delay = initialDelay
        self.pauses = 0  # in all
        self.closedUnanswered = 0  # in the current episode
        self._episodeStart: float | None = None
        self._episodePauses = 0
        self._exhausted: str | None = None
        self._call: IDelayedCall | None = None
        self._doRead = port.doRead
        portLogger = port._logger
        self._forward = portLogger.observer
        port._logger = Logger(namespace=portLogger.namespace, observer=self._observe)  # type: ignore[arg-type]  # a plain callable observes
        port.doRead = self.doRead

    @classmethod
    def install(
        cls, port: Any, clock: IReactorTime, describe: Callable[[], str] = str
    ) -> AcceptGuard | None:
        """Guard C{port} if it is a Twisted C{tcp.Port} (or like one); None otherwise."""
        if not all(hasattr(port, a) for a in ("doRead", "_logger", "stopReading", "startReading")):
            return None
        return cls(port, clock, describe)

    def _observe(self, event: dict[str, Any]) -> None:
        fmt = str(event.get("log_format") or "")
        error = event.get("acceptError")
        if error in _EXHAUSTED or "EMFILE" in fmt:
            self._exhausted = str(error or "EMFILE")
            if "address" in event:
                self.closedUnanswered += 1
            return
        self._forward(event)

    def doRead(self) -> Any:
        self._exhausted = None
        result = self._doRead()
        if self._exhausted is not None:
            self._pause(self._exhausted)
        elif self._episodeStart is not None:
            log.info(
                "accepting connections again after {seconds:.1f}s and {pauses} pauses; "
                "{closed} connections were closed unanswered meanwhile",
                seconds=self.clock.seconds() - self._episodeStart,
                pauses=self._episodePauses,
                closed=self.closedUnanswered,
            )
            self._episodeStart = None
            self.delay = self.initialDelay
        return result

    def _pause(self, error: str) -> None:
        self.pauses += 1
        self._episodePauses += 1
        if self._episodeStart is None:
            self._episodeStart = self.clock.seconds()
            self._episodePauses = 1
            self.closedUnanswered = 0
            log.warn(
                "cannot accept connections ({error}: out of file descriptors); {state}; "
                "pausing accepts, retrying with back-off up to {maxDelay}s",
                error=error,
                state=self.describe(),
                maxDelay=self.maxDelay,
            )
        self.port.stopReading()
        if self._call is None or not self._call.active():
            self._call = self.clock.callLater(self.delay, self._resume)
        self.delay = min(self.delay * 2, self.maxDelay)

    def _resume(self) -> None:
        self._call = None
        if getattr(self.port, "connected", True) and not getattr(self.port, "disconnecting", False):
            self.port.startReading()

    @property
    def paused(self) -> bool:
        return self._call is not None and self._call.active()

    def stop(self) -> None:
        """Cancel a pending resume (the port is being closed)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
