"""
The plain Autobahn peer of the benchmark: Autobahn's documented broadcast, one
``factory.prepareMessage(payload)`` per publish and ``sendPreparedMessage`` to every client.

WebSocket clients connect on ``WS_PORT`` and get one "ok" text frame once they are in the
broadcast set; ``POST /publish`` on ``HTTP_PORT`` (twisted.web) broadcasts its body.

    python autobahn_peer.py WS_PORT HTTP_PORT
"""

from __future__ import annotations

import sys

from autobahn.exception import Disconnected
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Request, Site


class BroadcastProtocol(WebSocketServerProtocol):
    def onOpen(self) -> None:
        self.factory.clients.add(self)
        self.sendMessage(b"ok")

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.clients.discard(self)


class BroadcastFactory(WebSocketServerFactory):
    protocol = BroadcastProtocol

    def __init__(self) -> None:
        super().__init__()
        self.clients: set[BroadcastProtocol] = set()

    def broadcast(self, payload: bytes) -> int:
        msg = self.prepareMessage(payload, isBinary=False)
        n = 0
        for client in list(self.clients):
            try:
                client.sendPreparedMessage(msg)
                n += 1
            except Disconnected:
                pass
        return n


class Publish(Resource):
    isLeaf = True

    def __init__(self, factory: BroadcastFactory) -> None:
        super().__init__()
        self.factory = factory

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        n = self.factory.broadcast(request.content.read())
        request.setHeader(b"content-type", b"text/plain")
        return str(n).encode()


def main(wsPort: int, httpPort: int) -> None:
    factory = BroadcastFactory()
    reactor.listenTCP(wsPort, factory, backlog=1024, interface="127.0.0.1")
    reactor.listenTCP(httpPort, Site(Publish(factory)), interface="127.0.0.1")
    reactor.callWhenRunning(lambda: (sys.stdout.write("listening\n"), sys.stdout.flush()))
    reactor.run()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
