"""
The private attributes of Twisted and Autobahn that pushsvc relies on, checked once at start-up.

Reaching into a library's internals is a trade made for memory and speed (see
C{docs/architecture.md} for why each is used). An upgrade that renames one must stop the service
at start-up with a line that says which, not fail silently on the hot path. L{checkPrivateAPIs}
is called by L{pushsvc.service.PushService.startService} before anything listens.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pushsvc.ws.autobahn import AUTOBAHN_TIMERS, HANDSHAKE_LEFTOVERS

# Twisted's tcp.Connection, read by the fan-out writer (pushsvc.fanout.writer) to write to the
# socket directly when nothing is buffered.
TCP_CONNECTION = ("socket", "_tempDataLen", "dataBuffer", "disconnecting", "connected")
# Twisted's tcp.Port, whose accept loop AcceptGuard wraps (pushsvc.http.limits).
TCP_PORT = ("_logger", "doRead", "stopReading", "startReading")
# twisted.web's HTTPChannel and LineReceiver, driven by BoundedHTTPChannel (pushsvc.http.channel).
HTTP_CHANNEL = (
    "_buffer",
    "_busyReceiving",
    "_dataBuffer",
    "_handlingRequest",
    "_networkProducer",
    "_optimisticEagerReadSize",
    "_requestProducer",
    "_waitingForTransport",
    # Read and set by the publish fast path (BoundedHTTPChannel.readPost) between requests.
    "_receivedHeaderSize",
    "line_mode",
    "setRawMode",
)
# Autobahn's server protocol, slimmed by LeanServerProtocol (pushsvc.ws.autobahn). (Its
# serverConnectionDropTimeoutCall, made only in some closes, is read with a default.)
AUTOBAHN_PROTOCOL = (
    "CONFIG_ATTRS",
    "STATE_OPEN",
    "state",
    "send_queue",
    "localCloseCode",
    "data",  # the bytes of a frame not yet whole (PushServerProtocol.dataReceived)
    "current_frame",
    *(name for name in AUTOBAHN_TIMERS if name != "serverConnectionDropTimeoutCall"),
    *HANDSHAKE_LEFTOVERS,
)

_HANDSHAKE = (
    b"GET /app/k?protocol=7 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


class PrivateAPIMissing(Exception):
    """A private attribute pushsvc relies on is gone; the message is one line for the user."""


def versions() -> str:
    """C{Twisted X, autobahn Y}: the installed versions, for the message."""
    found = []
    for name in ("Twisted", "autobahn"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} (version unknown)")
    return ", ".join(found)


def _missing(obj: Any, names: Iterable[str], where: str) -> list[str]:
    return [f"{where}.{name}" for name in names if not hasattr(obj, name)]


def _tcpConnection(reactor: Any) -> list[str]:
    from twisted.internet import tcp
    from twisted.internet.protocol import Protocol

    a, b = socket.socketpair()
    try:
        conn = tcp.Connection(a, Protocol(), reactor)
        return _missing(conn, TCP_CONNECTION, "twisted.internet.tcp.Connection")
    finally:
        a.close()
        b.close()


def _httpChannel() -> list[str]:
    from twisted.internet.testing import StringTransport
    from twisted.web.http import HTTPChannel

    channel = HTTPChannel()
    channel.makeConnection(StringTransport())
    try:
        return _missing(channel, HTTP_CHANNEL, "twisted.web.http.HTTPChannel")
    finally:
        channel.connectionLost(None)


def _autobahnProtocol() -> list[str]:
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from twisted.internet.error import ConnectionDone
    from twisted.internet.testing import StringTransport
    from twisted.python.failure import Failure

    factory = WebSocketServerFactory()
    factory.protocol = WebSocketServerProtocol
    # No timers: nothing is left on the reactor.
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0, autoPingInterval=0)
    proto: Any = factory.buildProtocol(None)
    proto.makeConnection(StringTransport())
    proto.dataReceived(_HANDSHAKE)  # a whole opening handshake, then a close
    proto.sendClose(1000)
    proto.connectionLost(Failure(ConnectionDone()))
    return _missing(proto, AUTOBAHN_PROTOCOL, "autobahn WebSocketServerProtocol")


def missingPrivateAPIs(reactor: Any) -> list[str]:
    """The private attributes pushsvc relies on that are not there (none, normally)."""
    from twisted.internet import tcp

    missing = _tcpConnection(reactor)
    missing += _missing(tcp.Port, TCP_PORT, "twisted.internet.tcp.Port")
    missing += _httpChannel()
    missing += _autobahnProtocol()
    return missing


def checkPrivateAPIs(reactor: Any) -> None:
    """
    Raise L{PrivateAPIMissing} naming every missing attribute and the installed versions.
    """
    missing = missingPrivateAPIs(reactor)
    if missing:
        raise PrivateAPIMissing(
            f"pushsvc relies on {', '.join(missing)}, which the installed {versions()} "
            "no longer have: install the versions pushsvc supports (see pyproject.toml)."
        )
