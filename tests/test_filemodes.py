"""The data dir is 0700, the database and every key or secret file 0600, whatever the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, cast

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pushsvc.filemodes import createPrivateFile, privateDirectory, privateFile, writePrivateFile
from pushsvc.service import PushService, ServiceConfig


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def looseUmask(case: SynchronousTestCase) -> None:
    """Run the test under the common umask 022, which alone would give 0755 and 0644."""
    old = os.umask(0o022)
    case.addCleanup(os.umask, old)


class FileModeTests(SynchronousTestCase):
    def setUp(self) -> None:
        looseUmask(self)
        self.root = Path(self.mktemp())

    def test_newDirectory(self) -> None:
        """A new directory (with missing parents) is created 0700, and nothing is reported."""
        path = self.root / "a" / "data"
        self.assertEqual(privateDirectory(path), [])
        self.assertEqual(mode(path), 0o700)

    def test_looseDirectoryTightened(self) -> None:
        """An existing 0755 directory becomes 0700, in one sentence naming both modes."""
        self.root.mkdir(mode=0o755)
        os.chmod(self.root, 0o755)
        (changed,) = privateDirectory(self.root)
        self.assertEqual(mode(self.root), 0o700)
        self.assertIn("0755", changed)
        self.assertIn("0700", changed)
        self.assertEqual(privateDirectory(self.root), [])

    def test_files(self) -> None:
        """
        New files are 0600; an existing looser one is tightened without losing its content; a
        missing one is no error; a tight one is left alone.
        """
        self.root.mkdir()
        secret = self.root / "secret"
        writePrivateFile(secret, "s3cret\n")
        self.assertEqual(mode(secret), 0o600)
        loose = self.root / "loose"
        loose.write_text("kept")
        os.chmod(loose, 0o644)
        self.assertEqual(len(createPrivateFile(loose)), 1)
        self.assertEqual((mode(loose), loose.read_text()), (0o600, "kept"))
        self.assertEqual(privateFile(self.root / "missing"), [])
        self.assertEqual(privateFile(secret), [])
        fresh = self.root / "fresh"
        self.assertEqual(createPrivateFile(fresh), [])
        self.assertEqual((mode(fresh), fresh.read_bytes()), (0o600, b""))


class ServiceFileModeTests(TestCase):
    """The whole service, in this process, with the default SQLite store."""

    timeout = 30

    @inlineCallbacks
    def start(self, dataDir: Path) -> Any:
        service = PushService(
            ServiceConfig(listen=("tcp:0:interface=127.0.0.1",), dataDir=dataDir), reactor
        )
        service.startService()
        self.addCleanup(service.stopService)
        yield service.whenReady()
        # A message makes SQLite write its WAL, as a running chat does.
        assert service.store is not None
        yield service.store.append("r", "ann", "hello", 1.0)

    @inlineCallbacks
    def test_fresh(self) -> Any:
        """A fresh start makes the data dir 0700 and the database, its WAL and the keys 0600."""
        looseUmask(self)
        data = Path(self.mktemp()) / "data"
        yield self.start(data)
        self.assertEqual(mode(data), 0o700)
        names = [
            "app.json",
            "app-secret",
            "session-key",
            "pushsvc.sqlite3",
            "pushsvc.sqlite3-wal",
            "pushsvc.sqlite3-shm",
        ]
        self.assertEqual({name: mode(data / name) for name in names}, dict.fromkeys(names, 0o600))

    @inlineCallbacks
    def test_looseTightened(self) -> Any:
        """A data dir left 0755 with 0644 files by an older pushsvc is tightened, and each
        change is logged once with the old and the new mode."""
        looseUmask(self)
        data = Path(self.mktemp())
        data.mkdir()
        os.chmod(data, 0o755)
        for name in ["session-key", "app-secret", "pushsvc.sqlite3"]:
            (data / name).write_text("k" * 64 if name != "pushsvc.sqlite3" else "")
            os.chmod(data / name, 0o644)
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        yield self.start(data)
        self.assertEqual(mode(data), 0o700)
        for name in ["session-key", "app-secret", "pushsvc.sqlite3"]:
            self.assertEqual(mode(data / name), 0o600, name)
        changes = [e["change"] for e in events if "change" in e]
        self.assertEqual(len(changes), 4, changes)
        self.assertTrue(all("0644" in c or "0755" in c for c in changes), changes)
