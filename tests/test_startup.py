"""
Start-up errors and log lines, in process: the data directory lock, a taken port, option
mistakes, credentials "generated" only when they were, the WebSocket open/close lines and the
JSON log format.
"""

from __future__ import annotations

import io
import json
import os
import socket
from pathlib import Path
from typing import Any

from twisted.application.service import Application
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, LogLevel, capturedLogs, formatEvent
from twisted.python.components import Componentized
from twisted.trial.unittest import SynchronousTestCase

from pushsvc.apps import loadOrCreateApp
from pushsvc.datadir import DataDirError, checkDataDir, lockDataDir, unlockDataDir
from pushsvc.preflight import preflight
from pushsvc.service import PushService, ServiceConfig, StartupError
from pushsvc.tap import Options, _JSONLog, makeService
from pushsvc.ws.protocol import makeAppFactory
from tests.fakews import FakeClient
from tests.test_protocol import APP, PATH, Server


def takenPort(case: SynchronousTestCase) -> int:
    """A loopback port with a listening socket on it, closed at cleanup."""
    taken = socket.socket()
    case.addCleanup(taken.close)
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    return int(taken.getsockname()[1])


class DataDirTests(SynchronousTestCase):
    def test_lockIsExclusive(self) -> None:
        """A locked data directory refuses a second lock, naming the holder's pid and what to
        do; once released it can be locked again."""
        path = Path(self.mktemp())
        fd, created = lockDataDir(path)
        self.assertTrue(created)
        self.assertEqual((path / "lock").read_text().strip(), str(os.getpid()))
        e = self.assertRaises(DataDirError, lockDataDir, path)
        self.assertIn(f"in use by another pushsvc process (pid {os.getpid()})", str(e))
        self.assertIn("--data-dir", str(e))
        unlockDataDir(fd)
        fd, created = lockDataDir(path)
        self.assertFalse(created)
        unlockDataDir(fd)

    def test_missingParents(self) -> None:
        """Missing parents are fine: the check creates nothing; the lock creates them, and says
        which outermost directory it created."""
        top = Path(self.mktemp()).resolve()
        path = top / "a" / "b"
        checkDataDir(path)
        self.assertFalse(top.exists())
        fd, created = lockDataDir(path)
        self.addCleanup(unlockDataDir, fd)
        self.assertEqual(created, top)
        self.assertTrue(path.is_dir())

    def test_notADirectory(self) -> None:
        path = Path(self.mktemp())
        path.write_text("x")
        e = self.assertRaises(DataDirError, checkDataDir, path)
        self.assertIn("is not a directory", str(e))


class StartServiceTests(SynchronousTestCase):
    def service(self, dataDir: Path, *listen: str, onReactor: Any = reactor) -> PushService:
        config = ServiceConfig(
            listen=listen or ("tcp:0:interface=127.0.0.1",), dataDir=dataDir, storeURL="memory:"
        )
        return PushService(config, onReactor)

    def test_startupErrorIsExitOne(self) -> None:
        """A StartupError is an Exception (twistd removes its pidfile and tells a daemon's
        parent) and a SystemExit with status 1 (no traceback); str() is the message."""
        e = StartupError("pushsvc: no")
        self.assertIsInstance(e, Exception)
        self.assertIsInstance(e, SystemExit)
        self.assertEqual((e.code, str(e)), (1, "pushsvc: no"))

    def test_lockedDataDir(self) -> None:
        """A data directory locked by another process stops start-up with one line."""
        path = Path(self.mktemp())
        fd, _ = lockDataDir(path)
        self.addCleanup(unlockDataDir, fd)
        with capturedLogs() as events:
            e = self.assertRaises(StartupError, self.service(path).startService)
        self.assertIn("in use by another pushsvc process", str(e))
        self.assertEqual([ev["log_level"] for ev in events], [LogLevel.critical])
        self.assertEqual(sorted(os.listdir(path)), ["lock"])

    def test_portTakenLeavesNothing(self) -> None:
        """A taken port stops start-up with one line naming it; the data directory it had
        created is gone and unlocked."""
        port = takenPort(self)
        path = Path(self.mktemp())
        service = self.service(path, f"tcp:{port}:interface=127.0.0.1")
        with capturedLogs():
            e = self.assertRaises(StartupError, service.startService)
        self.assertIn(f"cannot listen on tcp:{port}", str(e))
        self.assertIn("choose another --listen", str(e))
        self.assertFalse(path.exists())
        self.assertEqual(service.ports, [])

    def test_portTakenRemovesCreatedParents(self) -> None:
        """The parents created for a data directory go too when start-up fails."""
        port = takenPort(self)
        top = Path(self.mktemp())
        with capturedLogs():
            self.assertRaises(
                StartupError,
                self.service(top / "a" / "data", f"tcp:{port}:interface=127.0.0.1").startService,
            )
        self.assertFalse(top.exists())

    def test_portTakenKeepsExistingDir(self) -> None:
        """A data directory that was there before is left (with its files) and unlocked."""
        port = takenPort(self)
        path = Path(self.mktemp())
        path.mkdir()
        (path / "keep").write_text("x")
        with capturedLogs():
            self.assertRaises(
                StartupError, self.service(path, f"tcp:{port}:interface=127.0.0.1").startService
            )
        self.assertTrue((path / "keep").exists())
        fd, _ = lockDataDir(path)
        unlockDataDir(fd)

    def test_startLine(self) -> None:
        """The start line says where to open the chat and which app is served; the stop
        unlocks the data directory."""
        path = Path(self.mktemp())
        service = self.service(
            path,
            "tcp:8080:interface=127.0.0.1",
            "tcp:9090",
            "unix:/tmp/never.sock",
            onReactor=MemoryReactorClock(),
        )
        with capturedLogs() as events:
            service.startService()
        lines = [formatEvent(e) for e in events]
        started = [line for line in lines if "started: open" in line]
        self.assertEqual(len(started), 1, lines)
        self.assertIn("open http://localhost:8080/, http://localhost:9090/ (", started[0])
        app = service.apps.default
        self.assertIn(f"serving app id {app.id}, key {app.key}", started[0])
        self.assertIn("(generated now: id, key, secret)", "\n".join(lines))
        with capturedLogs():
            self.successResultOf(service.stopService())
        fd, _ = lockDataDir(path)
        unlockDataDir(fd)

    def test_jsonLogObserverComponent(self) -> None:
        """The service hands its log observer to twistd's Application, where twistd looks."""
        service = self.service(Path(self.mktemp()))
        observer = _JSONLog(None)
        service.logObserver = observer
        application = Application("pushsvc")
        service.setServiceParent(application)
        self.assertIs(Componentized.getComponent(application, ILogObserver), observer)


class CredentialsTests(SynchronousTestCase):
    def test_generatedOnlyWhenGenerated(self) -> None:
        """Credentials from options and the environment are not "generated"; what was made up
        now is, and is reused (not generated again) next time."""
        path = Path(self.mktemp())
        path.mkdir()
        env = {"PUSHSVC_APP_SECRET": "s3"}
        self.assertEqual(loadOrCreateApp(path, "1", "k", None, env)[1], [])
        self.assertEqual(loadOrCreateApp(path, "1", "k", None, {})[1], ["secret"])
        self.assertEqual(loadOrCreateApp(path, "1", "k", None, {})[1], [])
        fresh = Path(self.mktemp())
        fresh.mkdir()
        self.assertEqual(loadOrCreateApp(fresh, None, None, None, {})[1], ["id", "key", "secret"])
        self.assertEqual(loadOrCreateApp(fresh, None, None, None, {})[1], [])


class OptionMistakeTests(SynchronousTestCase):
    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(list(args))
        return options

    def test_secretOnCommandLine(self) -> None:
        """--app-secret VALUE (a prefix of --app-secret-file) says where a secret goes."""
        for option, where in (
            ("--app-secret", "PUSHSVC_APP_SECRET"),
            ("--session-key", "PUSHSVC_SESSION_KEY"),
        ):
            e = self.assertRaises(SystemExit, self.parse, option, "abc")
            self.assertIn(f"there is no {option}", str(e))
            self.assertIn(where, str(e))
            self.assertNotIn("readable file", str(e))

    def test_sqliteDirectoryMustExist(self) -> None:
        """An absolute sqlite: path in a missing directory is refused, and not created."""
        missing = Path(self.mktemp()).absolute() / "dir"
        e = self.assertRaises(SystemExit, self.parse, "--store", f"sqlite:{missing}/x.db")
        self.assertIn(f"{missing} does not exist", str(e))
        self.assertFalse(missing.exists())
        self.assertFalse(missing.parent.exists())
        self.parse("--store", "sqlite:sub/x.db")  # inside the data dir: fine

    def test_logOptions(self) -> None:
        """--quiet-websockets turns the WebSocket lines off; --log-format is text or json."""
        self.assertTrue(makeService(self.parse()).config.logWebSockets)  # type: ignore[attr-defined]  # makeService returns an IService; ours has it
        quiet = makeService(self.parse("--quiet-websockets"))
        self.assertFalse(quiet.config.logWebSockets)  # type: ignore[attr-defined]  # makeService returns an IService; ours has it
        self.assertIsNone(makeService(self.parse()).logObserver)  # type: ignore[attr-defined]  # makeService returns an IService; ours has it
        self.assertIsInstance(
            makeService(self.parse("--log-format", "json")).logObserver,  # type: ignore[attr-defined]  # makeService returns an IService; ours has it
            _JSONLog,
        )
        e = self.assertRaises(SystemExit, self.parse, "--log-format", "xml")
        self.assertIn("text or json", str(e))


class PreflightTests(SynchronousTestCase):
    def test_portTaken(self) -> None:
        """The check a daemon makes before it forks finds a taken port, and creates nothing."""
        port = takenPort(self)
        path = Path(self.mktemp())
        problem = preflight(reactor, (f"tcp:{port}:interface=127.0.0.1",), path)
        self.assertIsNotNone(problem)
        self.assertIn(f"cannot listen on tcp:{port}", str(problem))
        self.assertFalse(path.exists())
        self.assertIsNone(preflight(reactor, ("tcp:0", "unix:/tmp/x.sock"), path))

    def test_locked(self) -> None:
        path = Path(self.mktemp())
        fd, _ = lockDataDir(path)
        self.addCleanup(unlockDataDir, fd)
        self.assertIn("in use", str(preflight(reactor, (), path)))


class LogFormatTests(SynchronousTestCase):
    def test_jsonOneObjectALine(self) -> None:
        """--log-format json writes each event as one JSON object on its own line."""
        out = io.StringIO()
        observer = _JSONLog({"nodaemon": True, "logfile": None})
        observer._stream = out
        observer(
            {
                "log_format": "hello {who}",
                "who": "ann\nbob",
                "log_level": LogLevel.info,
                "log_namespace": "t",
                "log_time": 1.0,
            }
        )
        observer({"log_format": "two", "log_level": LogLevel.warn, "log_time": 2.0})
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        first = json.loads(lines[0])
        self.assertEqual(first["who"], "ann\nbob")
        self.assertEqual(formatEvent(first), "hello ann\nbob")

    def test_jsonToTwistdLogFile(self) -> None:
        """With twistd's --logfile, the JSON goes to that file."""
        name = self.mktemp()
        observer = _JSONLog({"nodaemon": False, "logfile": name})
        observer({"log_format": "x", "log_time": 1.0})
        self.assertEqual(json.loads(Path(name).read_text().splitlines()[0])["log_format"], "x")


class WebSocketLogTests(SynchronousTestCase):
    def factory(self, **settings: Any) -> Any:
        clock = Clock()
        server = Server(clock, **settings)
        factory = makeAppFactory(server.apps, server.hub, server.registry, clock, server.settings)
        factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
        return factory, clock

    def test_openAndClose(self) -> None:
        """Each WebSocket opened and closed is one info line with the app, the client address,
        the close code and how long it was open; a refused one (4001) is one line too."""
        factory, clock = self.factory()
        with capturedLogs() as events:
            client = FakeClient(factory, PATH, port=41234)
            clock.advance(2.5)
            client.protocol.closeWith(4200, "bye")
            client.read()
            client.disconnect()
            FakeClient(factory, "/app/nope?protocol=7", port=41235).disconnect()
        lines = [formatEvent(e) for e in events if e["log_level"] == LogLevel.info]
        self.assertEqual(
            lines,
            [
                f"WebSocket open: app {APP.id}, client 127.0.0.1, socket {client.socketId}",
                f"WebSocket closed: app {APP.id}, client 127.0.0.1, "
                f"socket {client.socketId}, code 4200, after 2.5s",
                "WebSocket refused: app -, client 127.0.0.1, code 4001 (unknown app key)",
            ],
        )

    def test_quiet(self) -> None:
        """With logWebSockets off (--quiet-websockets) nothing is logged per connection."""
        factory, _ = self.factory(logWebSockets=False)
        with capturedLogs() as events:
            FakeClient(factory, PATH).disconnect()
            FakeClient(factory, "/app/nope?protocol=7").disconnect()
        self.assertEqual([formatEvent(e) for e in events if "WebSocket" in formatEvent(e)], [])
