"""
Test doubles for the WebSocket side: an in-memory Pusher client that drives a server protocol
through a L{StringTransport}, with no sockets and no reactor, so tests can use C{task.Clock}.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport


class _Transport(StringTransport):
    """A StringTransport that, like TCP ones, lets a protocol unregister no producer."""

    def unregisterProducer(self) -> None:
        if self.producer is not None:
            super().unregisterProducer()


def maskedFrame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One whole client frame (RFC 6455 clients mask every frame)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + body


class FakeClient:
    """
    A Pusher client connected in memory to a protocol built by C{factory}.

    C{messages} holds every JSON frame the server sent (decoded, with C{data} of pusher events
    decoded again when it is a JSON string); C{closeCode} the code of a close frame from the
    server; C{status} the HTTP status of the handshake.
    """

    def __init__(
        self,
        factory: Factory,
        path: str = "/app/key?protocol=7",
        origin: str | None = None,
        port: int = 40000,
    ) -> None:
        self.transport = _Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        self.factory: Any = factory
        protocol: Any = factory.buildProtocol(self.transport.getPeer())
        self.protocol = protocol
        self.protocol.makeConnection(self.transport)
        self.messages: list[dict[str, Any]] = []
        self.opcodes: list[int] = []  # of every frame from the server, in order
        self._closeCode: int | None = None
        self._pings = 0
        self.status: int | None = None
        self._buf = b""
        headers = [
            f"GET {path} HTTP/1.1",
            "Host: localhost",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        ]
        if origin is not None:
            headers.append(f"Origin: {origin}")
        self.protocol.dataReceived(("\r\n".join(headers) + "\r\n\r\n").encode())
        self.read()

    @property
    def socketId(self) -> str:
        return str(self.first("pusher:connection_established")["data"]["socket_id"])

    @property
    def closeCode(self) -> int | None:
        """The code of the close frame the server sent, if it sent one."""
        self.read()
        return self._closeCode

    @property
    def pings(self) -> int:
        """How many WebSocket pings the server sent."""
        self.read()
        return self._pings

    def read(self) -> list[dict[str, Any]]:
        """Parse what the server wrote since the last read; @return: the new messages."""
        # Fan-out may be written from the reactor: on a test clock, let its turn come first.
        clock = getattr(self.factory, "clock", None)
        if isinstance(clock, Clock):
            clock.advance(0)
        self._buf += self.transport.value()
        self.transport.clear()
        new: list[dict[str, Any]] = []
        if self.status is None:
            head, sep, rest = self._buf.partition(b"\r\n\r\n")
            if not sep:
                return new
            self.status = int(head.split(b" ", 2)[1])
            self._buf = rest
        while len(self._buf) >= 2:
            b0, b1 = self._buf[0], self._buf[1] & 0x7F
            offset = 2
            if b1 == 126:
                if len(self._buf) < 4:
                    break
                b1, offset = int.from_bytes(self._buf[2:4], "big"), 4
            elif b1 == 127:
                if len(self._buf) < 10:
                    break
                b1, offset = int.from_bytes(self._buf[2:10], "big"), 10
            if len(self._buf) < offset + b1:
                break
            payload = self._buf[offset : offset + b1]
            self._buf = self._buf[offset + b1 :]
            opcode = b0 & 0x0F
            self.opcodes.append(opcode)
            if opcode == 0x1:
                msg = json.loads(payload)
                if isinstance(msg.get("data"), str):
                    try:
                        msg["data"] = json.loads(msg["data"])
                    except ValueError:
                        pass
                new.append(msg)
            elif opcode == 0x8:
                self._closeCode = int.from_bytes(payload[:2], "big") if payload else 1005
            elif opcode == 0x9:
                self._pings += 1
        self.messages.extend(new)
        return new

    def sendRaw(self, payload: bytes, opcode: int = 0x1) -> list[dict[str, Any]]:
        """Send one frame; @return: the messages the server answered with."""
        self.protocol.dataReceived(maskedFrame(payload, opcode))
        return self.read()

    def send(
        self, event: str, data: Any = None, channel: str | None = None
    ) -> list[dict[str, Any]]:
        frame: dict[str, Any] = {"event": event}
        if data is not None:
            frame["data"] = data
        if channel is not None:
            frame["channel"] = channel
        return self.sendRaw(json.dumps(frame).encode())

    def pong(self) -> None:
        """Answer a WebSocket ping (a pong frame)."""
        self.protocol.dataReceived(maskedFrame(b"", 0xA))
        self.read()

    def events(self, name: str, channel: str | None = None) -> list[dict[str, Any]]:
        self.read()
        return [
            m
            for m in self.messages
            if m.get("event") == name and (channel is None or m.get("channel") == channel)
        ]

    def first(self, name: str) -> dict[str, Any]:
        found = self.events(name)
        if not found:
            raise AssertionError(f"no {name} in {self.messages}")
        return found[0]

    def disconnect(self) -> None:
        """The TCP connection drops."""
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self.protocol.connectionLost(Failure(ConnectionDone()))
