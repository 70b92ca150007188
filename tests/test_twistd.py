"""The real C{twistd -n pushsvc} in a subprocess: start-up, durability across restarts, errors."""

from __future__ import annotations

import signal
import socket
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from tests.procs import freePort, killIfRunning, startTwistd


class TwistdTests(TestCase):
    timeout = 120

    def start(self, *args: str, **kw: Any):  # type: ignore[no-untyped-def]
        proto = startTwistd(list(args), **kw)
        self.addCleanup(killIfRunning, proto)
        return proto

    def client(self) -> HTTPClient:
        """A treq client whose connections are closed after each request (clean reactor)."""
        return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))

    @inlineCallbacks
    def test_messageSurvivesRestart(self) -> Any:
        """
        A message posted to a running pushsvc is still there after SIGTERM and a new start on the
        same data directory; the chat page is served at /; credentials are generated once, logged
        without the secret, and reused.
        """
        port = freePort()
        dataDir = self.mktemp()
        base = f"http://127.0.0.1:{port}"
        args = ["--listen", f"tcp:{port}:interface=127.0.0.1", "--data-dir", dataDir]
        env = {"PUSHSVC_APP_SECRET": ""}
        treq = self.client()
        first = self.start(*args, env=env)
        yield first.waitFor("message store ready")
        page = yield treq.get(base + "/")
        self.assertEqual(page.code, 200)
        html = yield page.text()
        self.assertIn("<html", html.lower())
        session = yield treq.post(base + "/api/session", json={"name": "Ann"})
        self.assertEqual(session.code, 200)
        cookies = session.cookies()
        posted = yield treq.post(
            base + "/api/rooms/general/messages", json={"text": "still here?"}, cookies=cookies
        )
        self.assertEqual(posted.code, 201)
        message = yield posted.json()
        code = yield first.signal("TERM")
        # twistd ends by re-raising the signal it was stopped with, after a clean stop.
        self.assertEqual(code, -signal.SIGTERM, first.output.decode(errors="replace"))
        self.assertIn(b"stopped", first.output)
        secret = open(dataDir + "/app-secret").read().strip()
        self.assertNotIn(secret.encode(), first.output)
        self.assertIn(b"(generated now: id, key, secret)", first.output)

        second = self.start(*args, env=env)
        yield second.waitFor("message store ready")
        self.assertIn(b"app id", second.output)
        self.assertNotIn(b"generated", second.output)
        listing = yield treq.get(base + "/api/rooms/general/messages")
        body = yield listing.json()
        self.assertEqual(body["messages"], [message])
        health = yield treq.get(base + "/healthz")
        self.assertEqual(health.code, 200)
        self.assertEqual((yield health.json())["status"], "ok")
        code = yield second.signal("INT")
        self.assertEqual(code, -signal.SIGINT)
        self.assertIn(b"stopped", second.output)

    @inlineCallbacks
    def test_badEndpoint(self) -> Any:
        """--listen nonsense exits non-zero with a one-line error, no traceback."""
        proto = self.start("--listen", "nonsense", "--data-dir", self.mktemp())
        code = yield proto.ended
        self.assertNotEqual(code, 0)
        err = proto.stderr.decode().strip()
        self.assertNotIn("Traceback", err)
        self.assertIn("nonsense", err)
        self.assertEqual(len(err.splitlines()), 1, err)

    @inlineCallbacks
    def test_portTaken(self) -> Any:
        """A start on a taken port exits non-zero with a one-line error naming the endpoint."""
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proto = self.start(
            "--listen", f"tcp:{port}:interface=127.0.0.1", "--data-dir", self.mktemp()
        )
        code = yield proto.ended
        self.assertNotEqual(code, 0)
        err = proto.stderr.decode().strip()
        self.assertNotIn("Traceback", err)
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertIn(f"tcp:{port}", err)
        self.assertIn("address already in use", err.lower())
