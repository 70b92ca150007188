"""
The PostgreSQL L{IStore}: one database shared by any number of pushsvc processes.

SQL runs in a small thread pool of our own (never on the reactor thread), each call holding one
psycopg 3 connection for one transaction. Connections are made on demand and dropped when they
fail, so the store heals by itself: while the server is unreachable every call fails quickly with
L{StoreUnavailable} (C{connect_timeout}), and the first call after it is back succeeds. A pooled
connection that died while idle (server restart, proxy cut) is noticed at C{BEGIN}, before any of
the caller's SQL was sent, and replaced once, so no statement is ever sent twice.

psycopg's own pool is not used: it reconnects in the background with an exponential back-off,
which would keep calls failing for a while after the server is back.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from importlib.resources.abc import Traversable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from pushsvc.store import queries
from pushsvc.store.interface import IStore, StoreUnavailable
from pushsvc.store.schema import defaultSchema, loadScripts, pendingScripts

T = TypeVar("T")

DIALECT = queries.Dialect("%s", lockRoom=" FOR UPDATE")
KEEPALIVE = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30000,  # ms of unacknowledged data before the connection is dropped
}
CONNECT_TIMEOUT = 5  # seconds; libpq's default is to wait for as long as TCP does
STARTUP_CONNECT_TIMEOUT = 3  # seconds the start-up check waits for an answer
_MISSING_DATABASE = re.compile(r'database "(.+?)" does not exist')


def parseConninfo(conninfo: str) -> dict[str, Any]:
    """
    Parse a URL or C{key=value} string without connecting.

    @raise ValueError: with a sentence for the user that never contains the password.
    """
    try:
        return conninfo_to_dict(conninfo)
    except psycopg.Error as e:
        message = str(e).strip().rstrip(".")
        password = urlsplit(conninfo).password if "://" in conninfo else None
        if password:
            message = message.replace(password, "***")
        raise ValueError(f"The PostgreSQL URL cannot be parsed: {message}.") from None


def describe(params: dict[str, Any]) -> str:
    """C{postgresql://host:port/db} for logs and health output: no user, password or options."""
    host = params.get("host") or params.get("hostaddr") or "localhost"
    return f"postgresql://{host}:{params.get('port') or 5432}/{params.get('dbname') or ''}"


@implementer(IStore)
class PostgreSQLStore(queries.SQLStore):
    dialect = DIALECT

    def __init__(
        self,
        conninfo: str,
        reactor: Any,
        schema: Traversable | None = None,
        maxConnections: int = 4,
    ) -> None:
        """
        @param conninfo: a C{postgresql://} URL or libpq C{key=value} string, parsed but not used.
        @param schema: the directory of versioned C{.sql} scripts (tests pass their own).
        @param maxConnections: at most this many connections (and threads) at once.
        @raise ValueError: C{conninfo} cannot be parsed.
        """
        params = parseConninfo(conninfo)
        params.setdefault("connect_timeout", CONNECT_TIMEOUT)
        # A server that vanishes mid-query (a partition, not a refused connection) must fail
        # the call within seconds, not hold a worker thread until TCP gives up after hours.
        for key, value in KEEPALIVE.items():
            params.setdefault(key, value)
        params.setdefault("application_name", "pushsvc")
        self._conninfo = make_conninfo("", **params)
        self.description = describe(params)
        self._reactor = reactor
        self._schema = schema if schema is not None else defaultSchema("postgresql")
        self._maxConnections = maxConnections
        self._threads: ThreadPool | None = None
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()

    def startupProblem(self) -> str | None:
        """
        One quick connection, before the reactor runs (it blocks): a sentence saying what to do
        when the server answers that the database does not exist, which no retry would mend;
        None otherwise (an unreachable server is retried in the background by L{open}).
        """
        try:
            psycopg.connect(self._conninfo, connect_timeout=STARTUP_CONNECT_TIMEOUT).close()
        except psycopg.Error as e:
            missing = _MISSING_DATABASE.search(str(e))
            if missing is not None:
                params = conninfo_to_dict(self._conninfo)
                where = " ".join(
                    f"-{flag} {params[key]}"
                    for flag, key in (("h", "host"), ("p", "port"), ("U", "user"))
                    if params.get(key)
                )
                name = missing.group(1)
                return (
                    f"the PostgreSQL database {name!r} does not exist at {self.description}; "
                    f"create it with: createdb {where} {name}".replace("  ", " ")
                )
        return None

    def open(self) -> Deferred[None]:
        """Migrate the schema. Fires with None; fails with L{StoreUnavailable} when the server
        cannot be reached, or a SchemaError."""
        if self._threads is None:
            self._threads = ThreadPool(0, self._maxConnections, name="pushsvc-postgresql")
            self._threads.start()
        return self._run(_migrate, self._schema)

    def close(self) -> Deferred[None]:
        """Let running calls finish, then close every connection. Fires with None."""
        threads, self._threads = self._threads, None
        if threads is None:
            return succeed(None)

        def stop() -> None:
            threads.stop()  # waits for the running calls
            with self._lock:
                idle, self._idle = self._idle, []
            for connection in idle:
                connection.close()

        # Joining threads blocks, so do it from the reactor's pool rather than the reactor.
        d: Deferred[None] = deferToThreadPool(self._reactor, self._reactor.getThreadPool(), stop)
        return d

    def _run(self, work: Callable[..., T], *args: Any) -> Deferred[T]:
        if self._threads is None:
            return fail(StoreUnavailable(f"{self.description} is not open"))
        return deferToThreadPool(self._reactor, self._threads, self._transaction, work, *args)

    # -- in a worker thread --------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self._conninfo, autocommit=True)
        except psycopg.OperationalError as e:
            raise StoreUnavailable(f"{self.description}: {_firstLine(e)}") from e

    def _begin(self) -> psycopg.Connection[Any]:
        """A connection inside a new transaction: an idle one that still answers, or a new one."""
        with self._lock:
            connection = self._idle.pop() if self._idle else None
        if connection is not None:
            try:
                connection.execute("BEGIN")
                return connection
            except psycopg.OperationalError:
                connection.close()
        connection = self._connect()
        try:
            connection.execute("BEGIN")
        except psycopg.OperationalError as e:
            connection.close()
            raise StoreUnavailable(f"{self.description}: {_firstLine(e)}") from e
        return connection

    def _transaction(self, work: Callable[..., T], *args: Any) -> T:
        connection = self._begin()
        try:
            with connection.cursor() as cursor:
                result = work(cursor, *args)
            connection.execute("COMMIT")
        except psycopg.OperationalError as e:
            # Lost connection, server shutting down, deadlock, ...: the transaction is gone.
            connection.close()
            raise StoreUnavailable(f"{self.description}: {_firstLine(e)}") from e
        except BaseException:
            try:
                connection.execute("ROLLBACK")
            except psycopg.Error:
                connection.close()
            raise
        finally:
            if not connection.closed:
                if connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                    with self._lock:
                        self._idle.append(connection)
                else:
                    connection.close()
        return result


def _firstLine(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


# -- transactions: each runs in a worker thread, between BEGIN and COMMIT -----------------------


def _migrate(cursor: Any, schema: Traversable) -> None:
    scripts = loadScripts(schema)
    # Processes starting together must not both create the tables: one waits for the other.
    cursor.execute(
        "SELECT pg_advisory_xact_lock(hashtext('pushsvc.store:' || coalesce(current_schema(), '')))"
    )
    cursor.execute("SELECT to_regclass('version') IS NOT NULL")
    current = 0
    if cursor.fetchone()[0]:
        cursor.execute("SELECT max(version) FROM version")
        current = cursor.fetchone()[0] or 0
    todo = pendingScripts(scripts, current)
    for script in todo:
        cursor.execute(script.sql)
    if todo:
        cursor.execute("DELETE FROM version")
        cursor.execute("INSERT INTO version (version) VALUES (%s)", (todo[-1].version,))
