"""
The writing side of fan-out, and the only code that touches Twisted's transport internals
(C{tcp.Connection.socket}, C{_tempDataLen}, C{dataBuffer}, C{disconnecting}; checked once at
start-up by L{pushsvc.compat.checkPrivateAPIs}): L{Outbound}, one per connection, and L{FanOut},
the queue and hot loop that write one pre-built frame to every local subscriber of a channel.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from os import write as _write
from typing import TYPE_CHECKING, Any

from twisted.internet import tcp
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from pushsvc.frames import wsTextFrame

if TYPE_CHECKING:
    from pushsvc.fanout.subscriptions import ChannelKey, Subscriber

log = Logger()

# Connections written per reactor turn while a fan-out is in progress: ~1 ms of sends, so the
# network is read (and new publishes join the queued frames) at least that often.
FLUSH_CHUNK = 128

# A fan-out that finds the registry quiet (nothing queued for QUIET_SECONDS) writes its first
# SYNC_LIMIT connections at once, ahead of the rest of the work of its publish (the HTTP answer,
# the access log): under a light load no frame waits for a reactor turn. Under load, fan-out is
# queued and written in chunks, where later publishes join it.
QUIET_SECONDS = 0.005
SYNC_LIMIT = 8 * FLUSH_CHUNK

# Bytes of frames queued and not yet written past which a delivery first writes the backlog
# down, there and then: publishes arriving faster than their fan-out can be written wait in
# their sockets, as they would without the queue, instead of growing it without end.
MAX_QUEUED_BYTES = 16 * 1024 * 1024


def directFd(transport: Any) -> int:
    """
    The file descriptor of the socket under C{transport} when frames may be written to it
    straight away: a plain TCP transport of the reactor (not TLS, not a test double). -1
    otherwise.
    """
    if isinstance(transport, tcp.Connection) and not getattr(transport, "TLS", False):
        return int(transport.socket.fileno())
    return -1


def writable(transport: Any) -> bool:
    """
    Whether bytes may go straight to C{transport}'s socket, ahead of nothing: it is connected,
    not closing and holds nothing of its own to send (an earlier partial frame, Autobahn's pings
    and close frames).

    C{connected} is what makes writing to the bare file descriptor safe: Twisted clears it (and
    stops the producer, L{Outbound}) before it closes the socket, whose number may then be reused
    by another connection.
    """
    return bool(
        transport.connected
        and not (transport._tempDataLen or transport.dataBuffer or transport.disconnecting)
    )


def writeNow(transport: Any, data: bytes) -> None:
    """
    C{transport.write(data)}, but straight to the socket when L{writable} (one C{write} instead of
    two C{epoll_ctl} and a reactor turn); what the socket does not take goes through the
    transport as usual, which then tells its producer when it is full. For replies written
    outside twisted.web (the HTTP channel's fast path).
    """
    fd = directFd(transport)
    if fd >= 0 and writable(transport):
        sent = writeSome(fd, data)
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


@implementer(IPushProducer)
class Outbound:
    """
    The writing end of one connection, registered as the streaming producer of its transport so
    the transport says when its buffer is full (C{pauseProducing}) and when it drained
    (C{resumeProducing}).

    On a plain TCP transport with nothing buffered (L{writable}), a frame goes straight to the
    socket: one C{write} on its file descriptor and nothing else, where C{transport.write}
    costs two C{epoll_ctl} calls and a reactor turn per connection. What the socket does not
    take (a partial write, C{EAGAIN}), and every frame while the transport still holds unsent
    bytes, goes through C{transport.write}, so the order of frames is kept and the transport's
    buffer and producer rules apply unchanged.

    While paused, every byte written is counted; past C{limit} the connection is a slow consumer:
    C{onOverflow} is called once and nothing more is written, so memory stays bounded. Twisted
    pauses producers once 64 KiB are buffered, so a connection is closed when its unsent bytes
    pass that plus C{limit} (plus what the kernel holds).

    Broadcast frames wait in C{pending} until the registry flushes this connection (see
    L{Registry.deliver}); every other frame written with L{send} takes what is pending with it,
    first, so the order in which frames were written is the order on the wire.
    """

    __slots__ = (
        "write",
        "paused",
        "queued",
        "limit",
        "onOverflow",
        "closed",
        "transport",
        "fd",
        "pending",
        "owner",
    )

    def __init__(
        self,
        write: Callable[[bytes], Any],
        limit: int,
        onOverflow: Callable[[], None],
        transport: Any = None,
    ) -> None:
        self.write = write
        self.paused = False
        self.queued = 0
        self.limit = limit
        self.onOverflow = onOverflow
        self.closed = False
        self.transport = transport
        # The socket's file descriptor while frames may be written to it directly, else -1
        # (also once closed: see close()).
        self.fd = directFd(transport)
        # Frames queued by the registry (bytes while one, a bytearray once joined), and the
        # registry, which counts them.
        self.pending: bytes | bytearray | None = None
        self.owner: FanOut | None = None

    def send(self, frame: bytes | bytearray) -> None:
        """Write whole WebSocket frames (after any pending ones), unless the connection closes."""
        if self.closed:
            return
        pending = self.pending
        if pending is not None:
            frame = self.take(pending) + frame
        if self.fd >= 0 and writable(self.transport):
            sent = writeSome(self.fd, frame)
            if sent == len(frame):
                return
            if sent:
                frame = frame[sent:]
        self.buffer(frame)

    def buffer(self, frame: bytes | bytearray) -> None:
        """Hand C{frame} to the transport, behind what it holds; count it while paused."""
        self.write(frame if type(frame) is bytes else bytes(frame))
        if self.paused:
            self.queued += len(frame)
            if self.queued > self.limit:
                self.close()
                self.onOverflow()

    def take(self, pending: bytes | bytearray) -> bytes | bytearray:
        """Take the queued frames out of the registry's hands: the caller writes or drops them."""
        self.pending = None
        if self.owner is not None:
            self.owner.queuedBytes -= len(pending)
        return pending

    def finish(self) -> None:
        """Write what is pending, then nothing more: the connection is about to close."""
        pending = self.pending
        if pending is not None:
            pending = self.take(pending)
            if not self.closed:
                self.send(pending)
        self.close()

    def drop(self) -> None:
        """The connection is gone: forget what is queued, write nothing more."""
        if self.pending is not None:
            self.take(self.pending)
        self.close()

    def close(self) -> None:
        """Write nothing more."""
        self.closed = True
        self.fd = -1

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.queued = 0

    def stopProducing(self) -> None:
        # Called by the transport's connectionLost before it closes the socket.
        self.close()


def writeSome(fd: int, data: bytes | bytearray) -> int:
    """Write what the socket C{fd} takes of C{data} now; 0 when it takes nothing or fails."""
    try:
        return _write(fd, data)
    except OSError:
        # EAGAIN, EINTR, or a broken connection: the caller hands the rest to transport.write,
        # and the reactor's next write attempt reports a loss through connectionLost as usual.
        return 0


class FanOut:
    """
    The fan-out queue, mixed into L{pushsvc.fanout.registry.Registry}: it reads the
    subscriptions kept by L{pushsvc.fanout.subscriptions.Subscriptions} directly (no call per
    delivery). Fan-out is queued and written from C{clock}, C{FLUSH_CHUNK} connections per
    reactor turn; see L{deliver}.
    """

    clock: IReactorTime
    _subs: dict[ChannelKey, dict[Subscriber, Outbound]]
    _bySocket: dict[str, Subscriber]
    publishes: int
    deliveries: int
    deliveryFailures: int

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        # Connections with frames pending, in the order they got their first one.
        self._dirty: deque[Outbound] = deque()
        self._flushCall: IDelayedCall | None = None
        self._flushing = False
        self._idleSince = float("-inf")  # when the queue last became empty
        # Bytes of frames queued and not yet written or dropped.
        self.queuedBytes = 0

    # -- fan-out -------------------------------------------------------------------------------

    def deliver(
        self, appId: str, channel: str, payload: bytes, exceptSocketId: str | None = None
    ) -> int:
        """
        Queue C{payload} (one JSON frame), framed once, for every local subscriber of C{channel}
        but C{exceptSocketId}.

        When the registry has been quiet, the first C{SYNC_LIMIT} connections are written at
        once. Otherwise the frames are written from the reactor, at most C{FLUSH_CHUNK}
        connections per turn, with the network read in between. So a publish that arrives while
        a large fan-out is still being written joins the frames still waiting: a connection then
        gets both in one C{send}. Frames are queued per connection, so each connection gets them
        in the order they were delivered, and every other frame written to it goes after them.

        @return: how many subscribers it was queued for.
        """
        self.publishes += 1
        subs = self._subs.get((appId, channel))
        if not subs:
            return 0
        frame = wsTextFrame(payload)
        skip = None
        if exceptSocketId:
            conn = self._bySocket.get(exceptSocketId)
            if conn is not None:
                skip = subs.get(conn)
        count = len(subs) - (skip is not None)
        self.deliveries += count
        outbounds: Iterator[Outbound] = iter(subs.values())
        if (
            self._flushCall is None
            and not self._flushing
            and not self._dirty
            and self.clock.seconds() - self._idleSince >= QUIET_SECONDS
        ):
            # A copy: what the writes set off must not change what this loop walks through.
            targets = list(subs.values())
            if len(targets) > SYNC_LIMIT:
                outbounds = iter(targets[SYNC_LIMIT:])
                del targets[SYNC_LIMIT:]
            else:
                outbounds = iter(())
            self._writeAtOnce(targets, skip, frame)
        dirty = self._dirty
        mark = dirty.append
        queued = 0
        for outbound in outbounds:
            if outbound is skip:
                continue
            queued += 1
            pending = outbound.pending
            if pending is None:
                outbound.pending = frame
                mark(outbound)
            elif type(pending) is bytes:
                # The first frame is shared by every connection; a second one makes this
                # connection's own buffer, which later frames extend in place.
                outbound.pending = bytearray(pending) + frame
            else:
                pending += frame
        self.queuedBytes += queued * len(frame)
        if dirty and not self._flushing:
            if self.queuedBytes > MAX_QUEUED_BYTES:
                while self.queuedBytes > MAX_QUEUED_BYTES // 2 and dirty:
                    self._flush(FLUSH_CHUNK, reschedule=False)
                self._reschedule()
            elif self._flushCall is None:
                self._flushCall = self.clock.callLater(0, self._flush)
        elif not dirty:
            self._idleSince = self.clock.seconds()
        return count

    def _writeAtOnce(self, outbounds: list[Outbound], skip: Outbound | None, frame: bytes) -> None:
        """
        Write C{frame} to each of C{outbounds} (but C{skip}) now. Nothing was queued anywhere
        when this began, so no frame waits ahead of it.

        This is the loop of every fan-out under a light load: L{Outbound.send}'s direct write,
        inlined, for the connections that take the whole frame at once (nearly all).
        """
        size = len(frame)
        failed = 0
        self._flushing = True  # a delivery made by a send (a close) only queues
        try:
            for outbound in outbounds:
                if outbound is skip:
                    continue
                pending = outbound.pending
                if pending is not None:
                    # Queued by a delivery made while this one was being written: it goes after
                    # this frame.
                    outbound.pending = frame + pending
                    self.queuedBytes += size
                    continue
                fd = outbound.fd
                try:
                    if fd >= 0:
                        t = outbound.transport
                        if t.connected and not (t._tempDataLen or t.dataBuffer or t.disconnecting):
                            try:
                                sent = _write(fd, frame)
                            except OSError:
                                sent = 0
                            if sent != size:
                                # The socket is full, or broken: the transport takes the rest
                                # (and reports a loss from the reactor).
                                outbound.buffer(frame[sent:] if sent else frame)
                            continue
                    # The transport holds bytes of its own, or this is not a TCP socket.
                    outbound.send(frame)
                except Exception:
                    failed += 1
        finally:
            self._flushing = False
        if failed:
            self._failed(failed)

    def _failed(self, n: int) -> None:
        """C{n} writes of one pass failed: count them, one log line for all."""
        self.deliveryFailures += n
        log.warn("{n} subscribers failed a delivery", n=n)

    def _flush(self, limit: int = FLUSH_CHUNK, reschedule: bool = True) -> None:
        """Write the pending frames of the next C{limit} connections, one send each."""
        if self._flushCall is not None:
            if self._flushCall.active():
                self._flushCall.cancel()
            self._flushCall = None
        dirty = self._dirty
        take = dirty.popleft
        failed = 0
        written = 0
        self._flushing = True  # a delivery made by a send (a close) only queues
        try:
            for _ in range(min(len(dirty), limit)):
                outbound = take()
                pending = outbound.pending
                if pending is None:
                    continue  # written meanwhile, with a reply, or dropped with its connection
                outbound.pending = None
                written += len(pending)
                try:
                    outbound.send(pending)
                except Exception:
                    failed += 1
        finally:
            self._flushing = False
            self.queuedBytes -= written
        if failed:
            self._failed(failed)
        if reschedule:
            self._reschedule()

    def _reschedule(self) -> None:
        """Write the rest in the next reactor turn; or, if nothing is left, note the quiet."""
        if self._dirty:
            if self._flushCall is None:
                self._flushCall = self.clock.callLater(0, self._flush)
        else:
            self._idleSince = self.clock.seconds()
