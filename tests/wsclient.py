"""A real Autobahn WebSocket client for tests: records what it receives, waits on it."""

from __future__ import annotations

import json
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint

from pushsvc.apps import App
from pushsvc.signing import channelAuth

PATH = "/app/{key}?protocol=7&client=js&version=8.6.0&flash=false"


class WSClient(WebSocketClientProtocol):
    """An Autobahn client that records what it receives and lets tests wait for it."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}
        self.closed: Deferred[int | None] = Deferred()
        self._waiters: list[tuple[str, str | None, int, Deferred[Any]]] = []
        self._seen: dict[tuple[str, str | None], int] = {}
        self.socketId = ""

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        msg = json.loads(payload)
        if isinstance(msg.get("data"), str) and msg["event"].startswith("pusher"):
            msg["data"] = json.loads(msg["data"])
        event = msg["event"]
        self.counts[event] = self.counts.get(event, 0) + 1
        if event == "pusher:connection_established":
            self.socketId = msg["data"]["socket_id"]
        if self.factory.keep or event.startswith("pusher"):
            self.messages.append(msg)
        self._check()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.closed.called:
            self.closed.callback(code)
        for *_, d in self._waiters:
            if not d.called:
                d.errback(AssertionError(f"closed {code} {reason} while waiting"))
        self._waiters = []

    def matching(self, event: str, channel: str | None = None) -> list[dict[str, Any]]:
        return [
            m
            for m in self.messages
            if m["event"] == event and (channel is None or m.get("channel") == channel)
        ]

    def _check(self) -> None:
        for w in list(self._waiters):
            event, channel, count, d = w
            if count:
                if self.counts.get(event, 0) >= count:
                    self._waiters.remove(w)
                    d.callback(count)
                continue
            found = self.matching(event, channel)
            i = self._seen.get((event, channel), 0)
            if len(found) > i:
                self._seen[(event, channel)] = i + 1
                self._waiters.remove(w)
                d.callback(found[i])

    def expect(self, event: str, channel: str | None = None, timeout: float = 5) -> Deferred[Any]:
        """Fires with the next not yet expected message C{event} (on C{channel})."""
        d: Deferred[Any] = Deferred()
        self._waiters.append((event, channel, 0, d))
        self._check()
        return d.addTimeout(timeout, reactor)

    def expectCount(self, event: str, count: int, timeout: float = 10) -> Deferred[Any]:
        """Fires once C{count} C{event} messages arrived in all."""
        d: Deferred[Any] = Deferred()
        self._waiters.append((event, None, count, d))
        self._check()
        return d.addTimeout(timeout, reactor)

    def sendJSON(self, event: str, data: Any = None, channel: str | None = None) -> None:
        frame: dict[str, Any] = {"event": event}
        if data is not None:
            frame["data"] = data
        if channel is not None:
            frame["channel"] = channel
        self.sendMessage(json.dumps(frame).encode())

    def roundTrip(self) -> Deferred[Any]:
        """Fires once everything sent before was handled (a ping's pong came back)."""
        self.sendJSON("pusher:ping", {})
        return self.expect("pusher:pong")


@inlineCallbacks
def connectClient(
    port: int, path: str, keep: bool = True, established: bool = True, **options: Any
) -> Any:
    """
    Connect a L{WSClient} to C{ws://127.0.0.1:port/path}; fires with it once
    C{connection_established} came (unless C{established} is false).
    """
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}{path}")
    factory.protocol = WSClient
    factory.keep = keep  # type: ignore[attr-defined]  # read back by WSClient
    factory.setProtocolOptions(autoPingInterval=0, **options)
    client = yield TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
    if established:
        yield client.expect("pusher:connection_established")
    return client


def subscribeClient(
    app: App,
    client: WSClient,
    channel: str,
    channelData: str | None = None,
    timeout: float = 5,
) -> Deferred[Any]:
    """Subscribe, signing private-/presence- channels for C{app}; fires with the success."""
    data: dict[str, Any] = {"channel": channel}
    if channel.startswith(("private-", "presence-")):
        data["auth"] = channelAuth(app, client.socketId, channel, channelData)
    if channelData is not None:
        data["channel_data"] = channelData
    client.sendJSON("pusher:subscribe", data)
    return client.expect("pusher_internal:subscription_succeeded", channel, timeout=timeout)
