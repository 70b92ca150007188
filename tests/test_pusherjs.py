"""
The official pusher-js client (npm, run under node from tests/js) against a real server on a
loopback port: what real browsers and apps use must work unchanged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from pushsvc.apps import App, Apps
from pushsvc.fanout.registry import Registry
from pushsvc.hub import Hub
from pushsvc.interfaces import PushSettings
from pushsvc.local import LocalBroker
from pushsvc.ws.protocol import makeAppResource
from tests.helpers import listenLocal, requirePusherJS

JS = Path(__file__).resolve().parent / "js"
APP = App("7", "pusherjs-key", "pusherjs-secret")


class NodeClient(ProcessProtocol):
    """One C{node client.js} child; C{expect(type, **fields)} fires with the next such line."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: list[dict[str, Any]] = []
        self.stderr = b""
        self._buf = b""
        self._seen: dict[str, int] = {}
        self._waiters: list[tuple[str, dict[str, Any], Deferred[Any]]] = []
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            if line.strip():
                self.lines.append(json.loads(line))
        self._check()

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason: Failure) -> None:
        for _, _, d in self._waiters:
            d.errback(
                AssertionError(
                    f"{self.name} ended: {self.stderr.decode(errors='replace')} {self.lines}"
                )
            )
        self._waiters = []
        self.ended.callback(None)

    def _matches(self, type: str, fields: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            line
            for line in self.lines
            if line.get("type") == type and all(line.get(k) == v for k, v in fields.items())
        ]

    def _check(self) -> None:
        for w in list(self._waiters):
            type, fields, d = w
            key = json.dumps([type, fields], sort_keys=True)
            found = self._matches(type, fields)
            i = self._seen.get(key, 0)
            if len(found) > i:
                self._seen[key] = i + 1
                self._waiters.remove(w)
                d.callback(found[i])

    def expect(self, type: str, timeout: float = 15, **fields: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self._waiters.append((type, fields, d))
        self._check()
        return d.addTimeout(timeout, reactor)

    def command(self, **cmd: Any) -> None:
        self.transport.write(json.dumps(cmd).encode() + b"\n")  # type: ignore[union-attr]  # connected: transport is set


class PusherJSTests(TestCase):
    timeout = 90

    def setUp(self) -> None:
        self.node = requirePusherJS()
        settings = PushSettings()
        self.registry = Registry(settings, reactor)
        self.hub = Hub(self.registry, LocalBroker(), reactor)
        root = Resource()
        resource = makeAppResource(Apps([APP]), self.hub, self.registry, reactor, settings)
        self.factory = resource._factory  # type: ignore[attr-defined]  # the factory behind the resource
        root.putChild(b"app", resource)
        self.port = listenLocal(Site(root))
        self.children: list[NodeClient] = []
        self.addCleanup(self.cleanUp)

    @inlineCallbacks
    def cleanUp(self) -> Any:
        for child in self.children:
            if not child.ended.called:
                try:
                    child.transport.signalProcess("KILL")  # type: ignore[union-attr]  # connected: transport is set
                except ProcessExitedAlready:
                    pass
            yield child.ended
        yield self.factory.registry.whenIdle()
        yield self.port.stopListening()

    def spawn(
        self,
        name: str,
        userId: str,
        channels: list[str],
        signin: bool = False,
        events: tuple[str, ...] = (),
    ) -> NodeClient:
        options = {
            "key": APP.key,
            "secret": APP.secret,
            "wsHost": "127.0.0.1",
            "wsPort": self.port.getHost().port,  # type: ignore[attr-defined]  # a TCP port has a port
            "userId": userId,
            "channels": channels,
            "signin": signin,
            "events": list(events),
        }
        child = NodeClient(name)
        env = {"PATH": os.environ.get("PATH", ""), "NODE_PATH": str(JS / "node_modules")}
        reactor.spawnProcess(
            child,
            self.node,
            [self.node, str(JS / "client.js"), json.dumps(options)],
            env=env,
            path=str(JS),
        )
        self.children.append(child)
        return child

    @inlineCallbacks
    def test_pusherJS(self) -> Any:
        """
        pusher-js connects, subscribes to public, private and presence channels, receives hub
        publishes, sees a second user join and leave, relays a client event with user_id, and
        signs in and receives events sent to its user.
        """
        channels = ["news", "private-notes", "presence-room"]
        ann = self.spawn("ann", "ann", channels, signin=True, events=("client-wave",))
        connected = yield ann.expect("connected")
        self.assertRegex(connected["socketId"], r"^\d+\.\d+$")
        for channel in channels:
            yield ann.expect("subscribed", channel=channel)
        signed = yield ann.expect("signed_in")
        self.assertEqual(signed["id"], "ann")

        yield self.hub.publish(APP, ["news", "private-notes"], "update", '{"n":1}')
        got = yield ann.expect("event", channel="news", event="update")
        self.assertEqual(got["data"], {"n": 1})
        yield ann.expect("event", channel="private-notes", event="update")
        yield self.hub.publish(APP, ["#server-to-user-ann"], "hello", '"just you"')
        userEvent = yield ann.expect("user_event", event="hello")
        self.assertEqual(userEvent["data"], "just you")

        bob = self.spawn("bob", "bob", ["presence-room"])
        joined = yield bob.expect("subscribed", channel="presence-room")
        self.assertEqual(sorted(joined["members"]), ["ann", "bob"])
        self.assertEqual(joined["me"], "bob")
        added = yield ann.expect("member_added", id="bob")
        self.assertEqual(added["info"], {"name": "bob"})

        bob.command(
            cmd="trigger", channel="presence-room", event="client-wave", data={"from": "bob"}
        )
        wave = yield ann.expect("bound", event="client-wave", channel="presence-room")
        self.assertEqual((wave["data"], wave["user_id"]), ({"from": "bob"}, "bob"))

        bob.command(cmd="disconnect")
        yield bob.ended
        yield ann.expect("member_removed", id="bob")
        self.assertEqual([line for line in ann.lines if line["type"] == "error"], [])
        self.assertEqual([line for line in bob.lines if line.get("event") == "client-wave"], [])
        ann.command(cmd="disconnect")
        yield ann.ended
