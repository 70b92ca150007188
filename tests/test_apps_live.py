"""
Several apps from an apps file on real C{twistd -n pushsvc} processes (issue 13): the official
SDKs (Python C{pusher}, pusher-js) against each app, a SIGHUP reload that adds, disables and
rotates while a third app's subscriber keeps receiving, a broken file refused on reload, and two
processes on Redis that keep the apps apart and share C{max_connections}.
"""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path
from typing import Any

import pusher
import pusher.errors
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from pushsvc.apps import App
from tests.helpers import freePort, requirePusherJS
from tests.procs import TwistdProcess, killIfRunning, startTwistd
from tests.redisutil import REDIS_URL, deleteKeys, requireRedis
from tests.test_pusherjs import JS, NodeClient
from tests.wsclient import PATH, WSClient, connectClient, subscribeClient


def appTable(app: App, secretFile: Path | None = None, **limits: Any) -> str:
    lines = ["[[app]]", f'id = "{app.id}"', f'key = "{app.key}"']
    if secretFile is not None:
        lines.append(f'secret_file = "{secretFile}"')
    else:
        lines.append(f'secret = "{app.secret}"')
    for name, value in limits.items():
        lines.append(f"{name} = {str(value).lower() if isinstance(value, bool) else value}")
    return "\n".join(lines) + "\n\n"


def uniqueApp(name: str) -> App:
    suffix = uuid.uuid4().hex[:10]
    return App(str(uuid.uuid4().int % 10**12), f"{name}-{suffix}", f"secret-{name}-{suffix}")


class AppsLiveCase(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).resolve()
        self.dir.mkdir()
        self.appsFile = self.dir / "apps.toml"

    def writeApps(self, text: str) -> None:
        # Written beside and renamed into place, as an editor or a deploy tool does.
        new = self.dir / "apps.toml.new"
        new.write_text(text)
        new.chmod(0o600)
        new.replace(self.appsFile)

    def start(self, redis: str | None = None) -> tuple[TwistdProcess, int]:
        port = freePort()
        args = [
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--data-dir",
            self.mktemp(),
            "--store",
            "memory:",
            "--apps-file",
            str(self.appsFile),
        ]
        if redis is not None:
            args += ["--redis", redis]
        proc = startTwistd(args, env={"PUSHSVC_SESSION_KEY": "apps-live-session-key-0123456789"})
        self.addCleanup(killIfRunning, proc)
        return proc, port

    def sdk(self, app: App, port: int) -> pusher.Pusher:
        return pusher.Pusher(
            app_id=app.id, key=app.key, secret=app.secret, host="127.0.0.1", port=port, ssl=False
        )

    def trigger(self, app: App, port: int, channel: str | list[str], event: str, data: Any) -> Any:
        """The official SDK's trigger, in a thread (it blocks)."""
        return deferToThread(self.sdk(app, port).trigger, channel, event, data)

    @inlineCallbacks
    def connect(self, port: int, app: App) -> Any:
        client: WSClient = yield connectClient(port, PATH.format(key=app.key), established=False)
        self.addCleanup(self._close, client)
        return client

    def _close(self, client: WSClient) -> Any:
        if not client.closed.called:
            client.transport.abortConnection()  # type: ignore[union-attr]
        return client.closed


class ReloadTests(AppsLiveCase):
    @inlineCallbacks
    def test_sighupReload(self) -> Any:
        """
        With three apps, each app's subscriber gets only its app's events (official SDK). After
        the file is edited and SIGHUP sent: an added app works at once, the disabled app's
        connection is closed with 4003, the rotated secret signs (the old one gets 401), and the
        untouched app's subscriber keeps receiving on the same connection. A broken file on
        the next SIGHUP is refused with one log line, and the running apps stay.
        """
        keep, off, rotate, added = (uniqueApp(n) for n in ("keep", "off", "rotate", "added"))
        secretFile = self.dir / "rotate.secret"
        secretFile.write_text(rotate.secret + "\n")
        self.writeApps(appTable(keep) + appTable(off) + appTable(rotate, secretFile))
        proc, port = self.start()
        yield proc.waitFor("message store ready")
        self.assertIn(f"the chat uses app {keep.id}", proc.output.decode())

        clients = {}
        for app in (keep, off, rotate):
            client = yield self.connect(port, app)
            yield client.expect("pusher:connection_established")
            yield subscribeClient(app, client, "news")
            clients[app.id] = client
        for app in (keep, off, rotate):
            yield self.trigger(app, port, "news", "hello", {"to": app.id})
        for app in (keep, off, rotate):
            got = yield clients[app.id].expect("hello", "news")
            self.assertEqual(got["data"], f'{{"to": "{app.id}"}}')
        for app in (keep, off, rotate):
            self.assertEqual(len(clients[app.id].matching("hello")), 1)
        keepSocket = clients[keep.id].socketId

        rotated = App(rotate.id, rotate.key, "rotated-" + rotate.secret)
        secretFile.write_text(rotated.secret + "\n")
        self.writeApps(
            appTable(keep)
            + appTable(off, enabled=False)
            + appTable(rotate, secretFile)
            + appTable(added)
        )
        mark = len(proc.output)
        proc.signal("HUP")
        yield proc.waitFor("apps file reloaded", after=mark)
        code = yield clients[off.id].closed
        self.assertEqual(code, 4003)
        self.assertEqual(clients[off.id].matching("pusher:error")[0]["data"]["code"], 4003)

        e = yield self.assertFailure(
            self.trigger(rotate, port, "news", "old", "x"), pusher.errors.PusherBadAuth
        )
        self.assertIn("Invalid signature", str(e))
        yield self.trigger(rotated, port, "news", "new-secret", "x")
        yield clients[rotate.id].expect("new-secret", "news")

        newClient = yield self.connect(port, added)
        yield newClient.expect("pusher:connection_established")
        yield subscribeClient(added, newClient, "private-added")
        yield self.trigger(added, port, "private-added", "welcome", "x")
        yield newClient.expect("welcome", "private-added")

        yield self.trigger(keep, port, "news", "after", "x")
        yield clients[keep.id].expect("after", "news")
        self.assertFalse(clients[keep.id].closed.called)
        self.assertEqual(clients[keep.id].socketId, keepSocket)
        self.assertEqual(clients[keep.id].counts["pusher:connection_established"], 1)
        self.assertEqual(clients[keep.id].matching("pusher:error"), [])

        self.writeApps(appTable(keep) + 'colour = "blue"\n')
        mark = len(proc.output)
        proc.signal("HUP")
        yield proc.waitFor("apps file not reloaded, the running apps stay", after=mark)
        line = [x for x in proc.output[mark:].decode().splitlines() if "not reloaded" in x][0]
        self.assertIn(f"app '{keep.id}': colour: unknown field", line)
        yield self.trigger(added, port, "private-added", "still", "x")
        yield newClient.expect("still", "private-added")
        self.assertFalse(clients[keep.id].closed.called)

        code = yield proc.signal("TERM")
        # twistd ends by re-raising the signal it was stopped with, after a clean stop.
        self.assertEqual(code, -signal.SIGTERM)
        self.assertIn(b"stopped", proc.output)

    @inlineCallbacks
    def test_brokenFileAtStart(self) -> Any:
        """A broken apps file stops start-up with one line naming the file, app and field."""
        app = uniqueApp("bad")
        self.writeApps(appTable(app, max_connections='"many"'))
        proc, _ = self.start()
        code = yield proc.ended
        self.assertEqual(code, 1)
        self.assertIn(
            f"pushsvc: {self.appsFile}: app '{app.id}': max_connections: must be a whole number",
            proc.stderr.decode(),
        )


class PusherJSAppsTests(AppsLiveCase):
    def setUp(self) -> None:
        super().setUp()
        self.node = requirePusherJS()

    def spawn(self, app: App, port: int, channels: list[str]) -> NodeClient:
        import json

        options = {
            "key": app.key,
            "secret": app.secret,
            "wsHost": "127.0.0.1",
            "wsPort": port,
            "userId": f"user-{app.id}",
            "channels": channels,
            "signin": False,
            "events": [],
        }
        child = NodeClient(app.key)
        env = {"PATH": os.environ.get("PATH", ""), "NODE_PATH": str(JS / "node_modules")}
        reactor.spawnProcess(
            child,
            self.node,
            [self.node, str(JS / "client.js"), json.dumps(options)],
            env=env,
            path=str(JS),
        )

        def kill() -> Any:
            if not child.ended.called:
                try:
                    child.transport.signalProcess("KILL")  # type: ignore[union-attr]
                except ProcessExitedAlready:
                    pass
            return child.ended

        self.addCleanup(kill)
        return child

    @inlineCallbacks
    def test_pusherJSPerApp(self) -> Any:
        """
        pusher-js clients of two apps subscribe to the same channel names (public, private,
        presence); what the Python SDK publishes to one app reaches only that app's client, and
        presence members of one app are not seen by the other.
        """
        one, two = uniqueApp("one"), uniqueApp("two")
        self.writeApps(appTable(one) + appTable(two))
        proc, port = self.start()
        yield proc.waitFor("message store ready")
        channels = ["news", "private-notes", "presence-room"]
        a, b = self.spawn(one, port, channels), self.spawn(two, port, channels)
        for child in (a, b):
            for channel in channels:
                got = yield child.expect("subscribed", channel=channel)
                if channel == "presence-room":
                    self.assertEqual(len(got["members"]), 1)
        yield self.trigger(one, port, ["news", "private-notes"], "update", {"app": "one"})
        yield self.trigger(two, port, ["news", "private-notes"], "update", {"app": "two"})
        for child, name in ((a, "one"), (b, "two")):
            for channel in ("news", "private-notes"):
                got = yield child.expect("event", channel=channel, event="update")
                self.assertEqual(got["data"], {"app": name})
        yield self.trigger(two, port, "news", "marker", "m")
        yield b.expect("event", channel="news", event="marker")
        for child in (a, b):
            updates = [x for x in child.lines if x.get("event") == "update"]
            self.assertEqual(len(updates), 2)
            self.assertEqual([x for x in child.lines if x["type"] == "member_added"], [])
        self.assertEqual([x for x in a.lines if x.get("event") == "marker"], [])


class TwoNodeTests(AppsLiveCase):
    def setUp(self) -> None:
        requireRedis()
        super().setUp()

    @inlineCallbacks
    def test_twoProcesses(self) -> Any:
        """
        Two processes on Redis with one apps file: an event published through one process
        reaches the app's subscriber on the other and never the other app's subscriber of the
        same channel; max_connections is counted over both (4004 on the second process once the
        first holds the limit).
        """
        one, two = uniqueApp("one"), uniqueApp("two")
        for app in (one, two):
            self.addCleanup(deleteKeys, f"pushsvc:{app.id}:*")
        self.writeApps(appTable(one, max_connections=2) + appTable(two))
        (p0, port0), (p1, port1) = self.start(REDIS_URL), self.start(REDIS_URL)
        yield gatherResults([p.waitFor("broker ready") for p in (p0, p1)])

        c1 = yield self.connect(port0, one)
        yield c1.expect("pusher:connection_established")
        t2 = yield self.connect(port1, two)
        yield t2.expect("pusher:connection_established")
        yield subscribeClient(one, c1, "news")
        yield subscribeClient(two, t2, "news")
        yield self.trigger(one, port1, "news", "for-one", "1")
        yield self.trigger(two, port0, "news", "for-two", "2")
        yield c1.expect("for-one", "news")
        yield t2.expect("for-two", "news")
        yield self.trigger(one, port0, "news", "marker", "m")
        yield self.trigger(two, port1, "news", "marker", "m")
        yield c1.expect("marker", "news")
        yield t2.expect("marker", "news")
        self.assertEqual(c1.matching("for-two"), [])
        self.assertEqual(t2.matching("for-one"), [])

        c2 = yield self.connect(port0, one)
        yield c2.expect("pusher:connection_established")
        yield p1.waitFor(f"app {one.id} has 2 connections across the cluster")
        refused = yield self.connect(port1, one)
        code = yield refused.closed
        self.assertEqual(code, 4004)
        self.assertEqual(refused.matching("pusher:error")[0]["data"]["code"], 4004)
        local = yield self.connect(port0, one)
        self.assertEqual((yield local.closed), 4004)
        other = yield self.connect(port1, two)
        yield other.expect("pusher:connection_established")
        self.assertFalse(c1.closed.called or c2.closed.called)
