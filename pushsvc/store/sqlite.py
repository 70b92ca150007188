"""
The SQLite L{IStore}: one file, no server, the default.

All SQL runs in the one thread of an C{adbapi.ConnectionPool} holding one connection, never on
the reactor thread. The file is in WAL mode with C{synchronous=FULL}, so a write whose Deferred
fired survives a power cut; writers take the lock up front (C{BEGIN IMMEDIATE}) and wait up to
C{busyTimeout} for it, so several processes may share the file.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, TypeVar

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pushsvc.filemodes import DIR_MODE, createPrivateFile, privateFile
from pushsvc.store import queries
from pushsvc.store.interface import IStore, StoreUnavailable
from pushsvc.store.schema import defaultSchema, loadScripts, pendingScripts

T = TypeVar("T")
log = Logger()

# RETURNING arrived in SQLite 3.35 (2021); older libraries read the new id back instead.
DIALECT = queries.Dialect(
    "?",
    returning=sqlite3.sqlite_version_info >= (3, 35, 0),
    # IMMEDIATE: take the write lock now, so a concurrent writer waits instead of failing later.
    beginWrite="BEGIN IMMEDIATE",
)


@implementer(IStore)
class SQLiteStore(queries.SQLStore):
    dialect = DIALECT

    def __init__(
        self,
        path: Path,
        reactor: Any,
        schema: Traversable | None = None,
        busyTimeout: float = 10.0,
    ) -> None:
        """
        @param path: the database file; it (0600) and its directory (0700) are created on
            L{open}.
        @param schema: the directory of versioned C{.sql} scripts (tests pass their own).
        @param busyTimeout: seconds to wait for another process's write lock.
        """
        self.path = path
        self.description = f"sqlite:{path}"
        self._reactor = reactor
        self._schema = schema if schema is not None else defaultSchema("sqlite")
        self._busyTimeout = busyTimeout
        self._pool: adbapi.ConnectionPool | None = None

    def _configure(self, connection: sqlite3.Connection) -> None:
        connection.execute(f"PRAGMA busy_timeout = {int(self._busyTimeout * 1000)}")
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute("PRAGMA foreign_keys = ON")

    def open(self) -> Deferred[None]:
        """Create the file if needed and migrate it. Fires with None; fails with
        L{StoreUnavailable} when the file cannot be opened or written, or a SchemaError."""
        if self._pool is None:
            self._pool = adbapi.ConnectionPool(
                "sqlite3",
                str(self.path),
                # isolation_level=None: we issue BEGIN ourselves, so DDL is transactional too.
                isolation_level=None,
                check_same_thread=False,
                timeout=self._busyTimeout,
                cp_min=1,
                cp_max=1,
                cp_openfun=self._configure,
                cp_reactor=self._reactor,
            )
        pool = self._pool
        prepared: Deferred[list[str]] = deferToThreadPool(
            self._reactor, pool.threadpool, _prepareFile, self.path
        )
        d = prepared.addCallback(_logChanges)
        d.addErrback(_unavailable, self.description)
        d.addCallback(lambda _: self._run(_migrate, self._schema))
        return d

    def close(self) -> Deferred[None]:
        """Wait for the running statement, close the connection. Fires with None."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        return succeed(None)

    def _run(self, interaction: Callable[..., T], *args: Any) -> Deferred[T]:
        if self._pool is None:
            return fail(StoreUnavailable(f"{self.description} is not open"))
        d: Deferred[T] = self._pool.runInteraction(interaction, *args)
        return d.addErrback(_unavailable, self.description)


def _prepareFile(path: Path) -> list[str]:
    """
    Create the database file 0600 (in a new directory 0700) before SQLite opens it, which would
    create it with the umask's mode; SQLite gives its -wal and -shm files the database file's
    mode. Existing looser files are tightened. Returns the changes, as sentences to log.
    """
    changes = []
    if not path.parent.is_dir():
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    changes += createPrivateFile(path)
    for suffix in ("-wal", "-shm"):
        changes += privateFile(path.with_name(path.name + suffix))
    return changes


def _logChanges(changes: list[str]) -> None:
    for change in changes:
        log.warn("{change}: the database is for this user only", change=change)


def _unavailable(f: Failure, description: str) -> Failure:
    """Report a file that cannot be opened, read, written or locked as L{StoreUnavailable}."""
    e = f.value
    if isinstance(e, sqlite3.OperationalError | OSError) or type(e) is sqlite3.DatabaseError:
        raise StoreUnavailable(f"{description}: {e}") from e
    return f


# -- interactions: each runs in the pool's thread, inside one transaction ----------------------


def _migrate(txn: Any, schema: Traversable) -> None:
    scripts = loadScripts(schema)
    txn.execute("BEGIN IMMEDIATE")
    txn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'version'")
    current = 0
    if txn.fetchone() is not None:
        txn.execute("SELECT max(version) FROM version")
        current = txn.fetchone()[0] or 0
    todo = pendingScripts(scripts, current)
    for script in todo:
        for statement in _statements(script.sql):
            txn.execute(statement)
    if todo:
        txn.execute("DELETE FROM version")
        txn.execute("INSERT INTO version (version) VALUES (?)", (todo[-1].version,))


def _statements(script: str) -> list[str]:
    """Split a script into statements (the sqlite3 module runs one per execute, and its
    executescript would commit our transaction first)."""
    statements = []
    start = 0
    end = script.find(";") + 1
    while end > 0:
        if sqlite3.complete_statement(script[start:end]):
            statements.append(script[start:end])
            start = end
        end = script.find(";", end) + 1
    if script[start:].strip():
        statements.append(script[start:])
    return statements
