"""The real C{twistd -n pushsvc} in a subprocess: start-up, durability across restarts, errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.logger import formatEvent
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from tests.helpers import freePort, requireService
from tests.procs import killIfRunning, startTwistd
from tests.redisutil import requireRedis
from tests.wsclient import PATH, connectClient


class TwistdTests(TestCase):
    timeout = 120

    def start(self, *args: str, **kw: Any):  # type: ignore[no-untyped-def]  # returns what startTwistd does
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
        dataDir = self.mktemp()
        args = ["--listen", "tcp:0:interface=127.0.0.1", "--data-dir", dataDir]
        env = {"PUSHSVC_APP_SECRET": ""}
        treq = self.client()
        first = self.start(*args, env=env)
        yield first.waitFor("message store ready")
        port = yield first.whenListening()
        base = f"http://127.0.0.1:{port}"
        args[1] = f"tcp:{port}:interface=127.0.0.1"  # the second start takes the same port
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


def readOnlyDir(case: TestCase) -> str:
    """
    A new directory in which nothing can be created, restored at cleanup: mode 0555, or for
    root (whom modes do not stop) the immutable attribute; skips where neither works.
    """
    path: str = os.path.abspath(case.mktemp())
    os.makedirs(path)
    if os.geteuid() != 0:
        os.chmod(path, 0o555)
        case.addCleanup(os.chmod, path, 0o755)
    else:
        chattr = shutil.which("chattr")
        if chattr is None or subprocess.run([chattr, "+i", path], capture_output=True).returncode:
            raise SkipTest("running as root without chattr +i: no directory is unwritable")
        case.addCleanup(subprocess.run, [chattr, "-i", path], check=True)
    try:
        os.mkdir(os.path.join(path, "probe"))
    except OSError:
        return path
    raise SkipTest(f"{path} is still writable")


class StartupFailureTests(TestCase):
    """
    Every start-up failure, in C{-n} and in daemon mode alike, ends the process within 10 s
    with status 1 and one line on stderr saying what to do: no traceback, no pidfile left, no
    data directory created.
    """

    timeout = 60

    @inlineCallbacks
    def failStart(self, daemon: bool, *args: str, cwd: str | None = None) -> Any:
        """Start twistd with C{args}; fires with its one stderr line once it has failed."""
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        pidfile = os.path.join(work, "p")
        twistdArgs = (
            (f"--pidfile={pidfile}", f"--logfile={work}/l")
            if daemon
            else ("-n", f"--pidfile={pidfile}")
        )
        proto = startTwistd(list(args), cwd=cwd or work, twistdArgs=twistdArgs)
        self.addCleanup(killIfRunning, proto)
        self.addCleanup(self.killDaemon, pidfile)
        ended = proto.ended
        ended.addTimeout(10, reactor)
        code = yield ended
        err = proto.stderr.decode(errors="replace").strip()
        self.assertEqual(code, 1, proto.output.decode(errors="replace"))
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertTrue(err.startswith("pushsvc: "), err)
        self.assertNotIn("Traceback", proto.output.decode(errors="replace"))
        self.assertFalse(os.path.exists(pidfile))
        return err

    def killDaemon(self, pidfile: str) -> None:
        """Cleanup: a daemon that started after all (a failed test) is killed by its pid."""
        if os.path.exists(pidfile):
            with open(pidfile) as f:
                os.kill(int(f.read().strip()), signal.SIGKILL)

    @inlineCallbacks
    def portTaken(self, daemon: bool) -> Any:
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        dataDir = os.path.abspath(self.mktemp())
        err = yield self.failStart(
            daemon, "--listen", f"tcp:{port}:interface=127.0.0.1", "--data-dir", dataDir
        )
        self.assertIn(f"cannot listen on tcp:{port}", err)
        self.assertIn("address already in use", err.lower())
        self.assertIn("choose another --listen", err)
        self.assertFalse(os.path.exists(dataDir))

    def test_portTakenNoDaemon(self) -> Any:
        return self.portTaken(False)

    def test_portTakenDaemon(self) -> Any:
        return self.portTaken(True)

    @inlineCallbacks
    def unwritable(self, daemon: bool) -> Any:
        dataDir = os.path.join(readOnlyDir(self), "data")
        err = yield self.failStart(
            daemon, "--listen", "tcp:0:interface=127.0.0.1", "--data-dir", dataDir
        )
        self.assertIn(f"cannot create the data directory {dataDir}", err)
        self.assertIn("--data-dir", err)
        self.assertFalse(os.path.exists(dataDir))

    def test_unwritableDataDirNoDaemon(self) -> Any:
        return self.unwritable(False)

    def test_unwritableDataDirDaemon(self) -> Any:
        return self.unwritable(True)

    @inlineCallbacks
    def locked(self, daemon: bool) -> Any:
        """A data directory in use by a running pushsvc (started from another directory) is
        refused; the running one is undisturbed."""
        dataDir = os.path.abspath(self.mktemp())
        first = startTwistd(
            [
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--data-dir",
                dataDir,
                "--store",
                "memory:",
            ]
        )
        self.addCleanup(killIfRunning, first)
        yield first.waitFor("message store ready")
        elsewhere = os.path.abspath(self.mktemp())
        os.makedirs(elsewhere)
        err = yield self.failStart(
            daemon,
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--data-dir",
            os.path.relpath(dataDir, elsewhere),
            cwd=elsewhere,
        )
        self.assertIn(f"the data directory {dataDir} is in use by another pushsvc process", err)
        self.assertIn(f"(pid {first.transport.pid})", err)  # type: ignore[union-attr]  # connected: transport is set
        self.assertFalse(first.ended.called)
        code = yield first.signal("TERM")
        self.assertEqual(code, -signal.SIGTERM)

    def test_lockedDataDirNoDaemon(self) -> Any:
        return self.locked(False)

    def test_lockedDataDirDaemon(self) -> Any:
        return self.locked(True)

    @inlineCallbacks
    def missingDatabase(self, daemon: bool) -> Any:
        """A PostgreSQL database that does not exist: one line saying how to create it, with
        no password in it."""
        requirePostgres()
        dataDir = os.path.abspath(self.mktemp())
        err = yield self.failStart(
            daemon,
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--data-dir",
            dataDir,
            "--store",
            f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/pushsvc_no_such_db",
        )
        self.assertIn("database 'pushsvc_no_such_db' does not exist", err)
        self.assertIn("createdb -h 127.0.0.1 -p 5432 -U postgres pushsvc_no_such_db", err)
        self.assertNotIn(PASSWORD, err)
        self.assertFalse(os.path.exists(dataDir))

    def test_missingDatabaseNoDaemon(self) -> Any:
        return self.missingDatabase(False)

    def test_missingDatabaseDaemon(self) -> Any:
        return self.missingDatabase(True)


PASSWORD = "hunter2-never-logged"


def requirePostgres() -> None:
    """Skip (fail under CI=true) when PostgreSQL does not answer on 127.0.0.1:5432."""
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=2).close()
    except OSError as e:
        requireService("PostgreSQL", f"is not reachable at 127.0.0.1:5432: {e}")


class LogTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_jsonLogWithWebSocketLines(self) -> Any:
        """
        With --log-format json every line of the log is one JSON object; a WebSocket connection
        and its close are logged at info with the app, the client address, the close code and
        the duration.
        """
        port = freePort()
        proto = startTwistd(
            [
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
                "--data-dir",
                self.mktemp(),
                "--app-id",
                "1",
                "--app-key",
                "k1",
                "--log-format",
                "json",
            ],
            env={"PUSHSVC_APP_SECRET": "s"},
        )
        self.addCleanup(killIfRunning, proto)
        yield proto.waitFor("message store ready")
        client = yield connectClient(port, PATH.format(key="k1"))
        client.sendClose(1000)
        yield client.closed
        yield proto.waitFor("WebSocket closed")
        code = yield proto.signal("TERM")
        self.assertEqual(code, -signal.SIGTERM)
        self.assertEqual(proto.stderr, b"")
        events = [json.loads(line) for line in proto.output.decode().splitlines()]
        self.assertGreater(len(events), 5)
        byFormat = {e.get("log_format", "").split(":")[0]: e for e in events}
        opened, closed = byFormat["WebSocket open"], byFormat["WebSocket closed"]
        self.assertEqual((opened["appId"], opened["client"]), ("1", "127.0.0.1"))
        self.assertEqual(opened["log_level"]["name"], "info")
        self.assertEqual(
            (closed["appId"], closed["client"], closed["code"]), ("1", "127.0.0.1", 1000)
        )
        self.assertGreaterEqual(closed["duration"], 0)
        self.assertIn(
            f"open http://localhost:{port}/", formatEvent(byFormat["pushsvc {version} started"])
        )

    @inlineCallbacks
    def test_passwordsNeverLogged(self) -> Any:
        """A password in the --redis and --store URLs appears nowhere in the output, while
        Redis refuses it and while the store is retried (the retry names the address, without
        the password, and the cause)."""
        requireRedis()
        closed = freePort()
        proto = startTwistd(
            [
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--data-dir",
                self.mktemp(),
                "--redis",
                f"redis://pushsvc-test:{PASSWORD}@127.0.0.1:6379/0",
                "--store",
                f"postgresql://postgres:{PASSWORD}@127.0.0.1:{closed}/test",
            ]
        )
        self.addCleanup(killIfRunning, proto)
        yield proto.waitFor("started: open")
        yield proto.waitFor("WRONGPASS")  # Redis's answer, logged
        yield proto.waitFor(f"cannot open postgresql://127.0.0.1:{closed}/test: ")
        yield proto.waitFor("retrying in")
        self.assertIn(b"refused", proto.output.lower())
        code = yield proto.signal("TERM")
        self.assertEqual(code, -signal.SIGTERM)
        self.assertNotIn(PASSWORD.encode(), proto.output)
