"""
The message stores: one contract, run against every engine (memory, SQLite, PostgreSQL), plus
schema upgrades, store URLs and PostgreSQL outages.

PostgreSQL tests use the server at $PUSHSVC_TEST_POSTGRESQL (default
postgresql://postgres@127.0.0.1:5432/test). Each test gets a schema of its own, named
pushsvc_test_<random>, selected with C{options=-c search_path=...} and dropped afterwards. With
no server they skip, or fail when CI=true.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.conninfo import make_conninfo
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, succeed
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from pushsvc.store import (
    IStore,
    Message,
    PendingWebhook,
    RoomSummary,
    StoreUnavailable,
    storeFromURL,
    validateStoreURL,
)
from pushsvc.store.memory import MemoryStore
from pushsvc.store.postgresql import PostgreSQLStore
from pushsvc.store.schema import SchemaError, defaultSchema, loadScripts, pendingScripts
from pushsvc.store.sqlite import SQLiteStore, _statements
from tests.helpers import requireService

PG_URL = os.environ.get("PUSHSVC_TEST_POSTGRESQL", "postgresql://postgres@127.0.0.1:5432/test")

AWKWARD_TEXTS = [
    "plain",
    "",
    "héllo wörld — “quotes” ‘single’",
    "emoji 🎉👩‍👩‍👧 and 中文 and עברית",
    'it\'s "quoted" `back` \\ back\\slash %s %(name)s ? :name $1',
    "<script>alert('x')</script>&amp;",
    "'; DROP TABLE messages; --",
    "line one\nline two\r\n\ttabbed",
    "x" * 10_000,
]

V2_SCRIPT = """
-- A test-only second version: a new table and a new column.
CREATE TABLE reactions (room TEXT NOT NULL, id BIGINT NOT NULL, emoji TEXT NOT NULL);
ALTER TABLE messages ADD COLUMN pinned_at DOUBLE PRECISION;
"""

BROKEN_V2_SCRIPT = """
CREATE TABLE half_done (x INTEGER);
INSERT INTO no_such_table VALUES (1);
"""


# The newest packaged schema version (both engines have the same number of scripts).
PACKAGED = len(loadScripts(defaultSchema("sqlite")))


def schemaDir(testCase: TestCase, engine: str, *extra: str, upTo: int = PACKAGED) -> Path:
    """
    A copy of C{engine}'s packaged scripts up to version C{upTo}, plus C{extra} scripts numbered
    after them.
    """
    directory = Path(testCase.mktemp())
    directory.mkdir()
    for script in loadScripts(defaultSchema(engine))[:upTo]:
        (directory / script.name).write_text(script.sql, encoding="utf-8")
    for number, sql in enumerate(extra, start=upTo + 1):
        (directory / f"{number:03d}-test.sql").write_text(sql, encoding="utf-8")
    return directory


if TYPE_CHECKING:
    _MixinBase = TestCase
else:
    _MixinBase = object


class StoreContractMixin(_MixinBase):
    """What every L{IStore} does. Subclasses define C{newStore()}: an unopened store."""

    def newStore(self, schema: Path | None = None) -> IStore:
        raise NotImplementedError

    @inlineCallbacks
    def openStore(self, schema: Path | None = None) -> Generator[Deferred[Any], Any, IStore]:
        """A new store, opened, closed again when the test ends."""
        store = self.newStore(schema)
        yield store.open()
        self.addCleanup(store.close)
        return store

    @inlineCallbacks
    def test_providesIStore(self) -> Generator[Deferred[Any], Any, None]:
        """The store provides every IStore method and a description."""
        store = yield self.openStore()
        self.assertTrue(verifyObject(IStore, store))
        self.assertIsInstance(store.description, str)

    @inlineCallbacks
    def test_idsPerRoom(self) -> Generator[Deferred[Any], Any, None]:
        """Each room numbers its messages 1, 2, 3... independently of the others."""
        store = yield self.openStore()
        results = []
        for room in ["a", "a", "b", "a", "b", "c"]:
            results.append((yield store.append(room, "ann", f"to {room}", 100.0)))
        self.assertEqual(
            [(m.room, m.id) for m in results],
            [("a", 1), ("a", 2), ("b", 1), ("a", 3), ("b", 2), ("c", 1)],
        )
        self.assertEqual(results[0], Message(1, "a", "ann", "to a", 100.0))

    @inlineCallbacks
    def test_messagesAfterOldestFirstBounded(self) -> Generator[Deferred[Any], Any, None]:
        """messages(after, limit) gives at most limit messages with id > after, oldest first."""
        store = yield self.openStore()
        for i in range(1, 6):
            yield store.append("r", "ann", f"m{i}", 1000.0 + i)
        yield store.append("other", "bob", "elsewhere", 2000.0)

        def ids(messages: list[Message]) -> list[int]:
            return [m.id for m in messages]

        eq = self.assertEqual
        eq(ids((yield store.messages("r", 0, 100))), [1, 2, 3, 4, 5])
        eq(ids((yield store.messages("r", 2, 2))), [3, 4])
        eq(ids((yield store.messages("r", 4, 100))), [5])
        eq((yield store.messages("r", 5, 100)), [])
        eq((yield store.messages("r", 0, 0)), [])
        eq((yield store.messages("nowhere", 0, 100)), [])
        eq((yield store.messages("r", 3, 1)), [Message(4, "r", "ann", "m4", 1004.0)])

    @inlineCallbacks
    def test_latestNewestOldestFirst(self) -> Generator[Deferred[Any], Any, None]:
        """latest(limit) gives the newest limit messages, oldest of them first."""
        store = yield self.openStore()
        for i in range(1, 6):
            yield store.append("r", "ann", f"m{i}", 1000.0 + i)
        eq = self.assertEqual
        eq([m.id for m in (yield store.latest("r", 3))], [3, 4, 5])
        eq([m.text for m in (yield store.latest("r", 100))], ["m1", "m2", "m3", "m4", "m5"])
        eq((yield store.latest("r", 0)), [])
        eq((yield store.latest("nowhere", 10)), [])

    @inlineCallbacks
    def test_roomsMostRecentFirst(self) -> Generator[Deferred[Any], Any, None]:
        """rooms(limit) lists rooms by their newest message, most recent first, bounded."""
        store = yield self.openStore()
        self.assertEqual((yield store.rooms(10)), [])
        yield store.append("a", "ann", "1", 10.0)
        yield store.append("b", "ann", "1", 30.0)
        yield store.append("c", "ann", "1", 20.0)
        yield store.append("a", "ann", "2", 40.0)
        eq = self.assertEqual
        eq(
            (yield store.rooms(10)),
            [RoomSummary("a", 2, 40.0), RoomSummary("b", 1, 30.0), RoomSummary("c", 1, 20.0)],
        )
        eq([r.name for r in (yield store.rooms(2))], ["a", "b"])

    @inlineCallbacks
    def test_textRoundTrips(self) -> Generator[Deferred[Any], Any, None]:
        """Unicode, emoji, quotes, markup, SQL and placeholders come back exactly as stored."""
        store = yield self.openStore()
        at = 1700000000.123456
        for i, text in enumerate(AWKWARD_TEXTS):
            message = yield store.append("rüm 🎈 'x'", f"author {text[:20]}", text, at + i)
            self.assertEqual(message.text, text)
        stored = yield store.messages("rüm 🎈 'x'", 0, 100)
        self.assertEqual([m.text for m in stored], AWKWARD_TEXTS)
        self.assertEqual([m.author for m in stored], [f"author {t[:20]}" for t in AWKWARD_TEXTS])
        self.assertEqual([m.createdAt for m in stored], [at + i for i in range(len(AWKWARD_TEXTS))])

    @inlineCallbacks
    def test_concurrentAppends(self) -> Generator[Deferred[Any], Any, None]:
        """Fifty appends fired at once get the ids 1 to 50, each stored as returned."""
        store = yield self.openStore()
        appended = yield gatherResults(
            [store.append("busy", f"user{i}", f"text {i}", 500.0 + i) for i in range(50)]
        )
        self.assertEqual(sorted(m.id for m in appended), list(range(1, 51)))
        stored = yield store.messages("busy", 0, 100)
        self.assertEqual(stored, sorted(appended, key=lambda m: m.id))

    @inlineCallbacks
    def test_revokedSessions(self) -> Generator[Deferred[Any], Any, None]:
        """
        A revoked session id is reported revoked, others are not; revoking twice is no error;
        a revocation is dropped once its cookie would have expired anyway.
        """
        store = yield self.openStore()
        self.assertFalse((yield store.sessionRevoked("a")))
        self.assertIsNone((yield store.revokeSession("a", 2000.0, 1000.0)))
        yield store.revokeSession("a", 2000.0, 1000.0)
        yield store.revokeSession("b", 1500.0, 1000.0)
        revoked = yield gatherResults([store.sessionRevoked(s) for s in ["a", "b", "c", "A", "a "]])
        self.assertEqual(revoked, [True, True, False, False, False])
        # At 1600 b's cookie has expired: its record goes, a's stays.
        yield store.revokeSession("c", 3000.0, 1600.0)
        revoked = yield gatherResults([store.sessionRevoked(s) for s in ["a", "b", "c"]])
        self.assertEqual(revoked, [True, False, True])

    @inlineCallbacks
    def test_beforePagesBack(self) -> Generator[Deferred[Any], Any, None]:
        """before(id, limit) gives the newest limit messages older than id, oldest first, so
        paging back from the latest page reaches message 1 with no gap or repeat."""
        store = yield self.openStore()
        for i in range(1, 13):
            yield store.append("r", "ann", f"m{i}", 1000.0 + i)
        yield store.append("other", "bob", "elsewhere", 2000.0)

        def ids(messages: list[Message]) -> list[int]:
            return [m.id for m in messages]

        eq = self.assertEqual
        eq(ids((yield store.before("r", 13, 5))), [8, 9, 10, 11, 12])
        eq(ids((yield store.before("r", 8, 5))), [3, 4, 5, 6, 7])
        eq(ids((yield store.before("r", 3, 5))), [1, 2])
        eq((yield store.before("r", 1, 5)), [])
        eq(ids((yield store.before("r", 10**12, 2))), [11, 12])
        eq((yield store.before("r", 5, 0)), [])
        eq((yield store.before("nowhere", 5, 5)), [])
        seen: list[int] = []
        page = yield store.latest("r", 4)
        while page:
            seen = ids(page) + seen
            page = yield store.before("r", page[0].id, 4)
        eq(seen, list(range(1, 13)))

    @inlineCallbacks
    def test_userAndClientIdStored(self) -> Generator[Deferred[Any], Any, None]:
        """A message keeps its author's user id and its client id, and says both in JSON."""
        store = yield self.openStore()
        message = yield store.append("r", "Ann", "hi", 1000.0, "u1", "c-1")
        self.assertEqual(message, Message(1, "r", "Ann", "hi", 1000.0, "u1", "c-1"))
        self.assertFalse(message.replayed)
        (stored,) = yield store.latest("r", 10)
        self.assertEqual(stored, message)
        body = stored.toJSON()
        self.assertEqual(
            (body["user_id"], body["client_id"], body["edited_at"], body["deleted"]),
            ("u1", "c-1", None, False),
        )

    @inlineCallbacks
    def test_clientIdStoredOnce(self) -> Generator[Deferred[Any], Any, None]:
        """
        A second append with the same (user, client id) stores nothing and fires with the first
        message, marked replayed, even when ten copies run at once; another user's same client
        id, or no client id, is a message of its own.
        """
        store = yield self.openStore()
        first = yield store.append("r", "Ann", "hello", 1000.0, "u1", "c-1")
        again = yield store.append("r", "Ann", "hello", 1001.0, "u1", "c-1")
        self.assertEqual(again, first)
        self.assertTrue(again.replayed)
        copies = yield gatherResults(
            [store.append("r", "Ann", "burst", 1002.0, "u1", "c-2") for _ in range(10)]
        )
        self.assertEqual({m.id for m in copies}, {2})
        self.assertEqual(sum(not m.replayed for m in copies), 1)
        other = yield store.append("r", "Ann", "hello", 1003.0, "u2", "c-1")
        plain = yield store.append("r", "Ann", "no id", 1004.0, "u1")
        plainToo = yield store.append("r", "Ann", "no id", 1005.0, "u1")
        self.assertEqual([other.id, plain.id, plainToo.id], [3, 4, 5])
        self.assertEqual(
            [m.text for m in (yield store.messages("r", 0, 100))],
            ["hello", "burst", "hello", "no id", "no id"],
        )

    @inlineCallbacks
    def test_editAndDelete(self) -> Generator[Deferred[Any], Any, None]:
        """
        The author edits and deletes her message; the stored row then has the current text
        (empty once deleted); another user's edit, or an edit of a deleted message, changes
        nothing; a missing message is None.
        """
        store = yield self.openStore()
        yield store.append("r", "Ann", "first", 1000.0, "u1")
        yield store.append("r", "Bob", "second", 1001.0, "u2")
        edited = yield store.edit("r", 1, "u1", "first, edited", 1010.0)
        self.assertEqual(
            (edited.text, edited.editedAt, edited.deleted), ("first, edited", 1010.0, False)
        )
        refused = yield store.edit("r", 2, "u1", "not mine", 1011.0)
        self.assertEqual((refused.text, refused.userId, refused.editedAt), ("second", "u2", None))
        deleted = yield store.edit("r", 1, "u1", None, 1020.0)
        self.assertEqual((deleted.text, deleted.deleted, deleted.editedAt), ("", True, 1020.0))
        late = yield store.edit("r", 1, "u1", "back again", 1030.0)
        self.assertEqual((late.text, late.deleted), ("", True))
        self.assertIsNone((yield store.edit("r", 3, "u1", "x", 1040.0)))
        self.assertIsNone((yield store.edit("nowhere", 1, "u1", "x", 1040.0)))
        stored = yield store.messages("r", 0, 10)
        self.assertEqual([(m.text, m.deleted) for m in stored], [("", True), ("second", False)])
        self.assertEqual(stored[0].toJSON()["edited_at"], "1970-01-01T00:17:00.000Z")

    @inlineCallbacks
    def test_createRoom(self) -> Generator[Deferred[Any], Any, None]:
        """A created room is listed (with last id 0) before it has messages; creating it
        again, or a room that has messages, is False."""
        store = yield self.openStore()
        self.assertTrue((yield store.createRoom("new", 50.0)))
        self.assertFalse((yield store.createRoom("new", 60.0)))
        yield store.append("old", "ann", "1", 40.0)
        self.assertFalse((yield store.createRoom("old", 70.0)))
        self.assertEqual(
            (yield store.rooms(10)), [RoomSummary("new", 0, 50.0), RoomSummary("old", 1, 40.0)]
        )
        yield store.append("new", "ann", "1", 80.0)
        self.assertEqual([r.name for r in (yield store.rooms(10))], ["new", "old"])
        self.assertEqual((yield store.latest("new", 10))[0].id, 1)

    @inlineCallbacks
    def test_pendingWebhooks(self) -> Generator[Deferred[Any], Any, None]:
        """
        Saved webhook batches come back oldest first, bodies byte for byte, bounded by the
        limit; saving an id twice keeps one; a deleted batch is gone, deleting twice is no error.
        """
        store = yield self.openStore()
        self.assertEqual((yield store.pendingWebhooks(10)), [])
        body = '{"time_ms":1,"events":[{"name":"client_event","data":"héllo 🎉 \\"x\\""}]}'
        b1 = PendingWebhook("id-1", "app", "http://127.0.0.1:1/h?q=1", body.encode(), 200.0)
        b2 = PendingWebhook("id-2", "app2", "http://127.0.0.1:2/", b"{}", 100.0)
        b3 = PendingWebhook("id-3", "app", "http://127.0.0.1:1/h?q=1", b"[]", 300.0)
        for batch in (b1, b2, b3, b1):
            self.assertIsNone((yield store.saveWebhook(batch)))
        self.assertEqual((yield store.pendingWebhooks(10)), [b2, b1, b3])
        self.assertEqual((yield store.pendingWebhooks(2)), [b2, b1])
        self.assertIsNone((yield store.deleteWebhook("id-2")))
        yield store.deleteWebhook("id-2")
        yield store.deleteWebhook("unknown")
        self.assertEqual((yield store.pendingWebhooks(10)), [b1, b3])

    @inlineCallbacks
    def test_ping(self) -> Generator[Deferred[Any], Any, None]:
        """An open store answers ping with None."""
        store = yield self.openStore()
        self.assertIsNone((yield store.ping()))


def legacyAppend(store: Any, room: str, author: str, text: str, at: float) -> Deferred[None]:
    """Store a message as a pushsvc before schema version 3 did (no user or client id)."""

    def work(cursor: Any) -> None:
        sql = store.dialect.sql
        cursor.execute(
            sql(
                "INSERT INTO rooms (name, last_id, last_at) VALUES (?, 0, ?) ON CONFLICT DO NOTHING"
            ),
            (room, at),
        )
        cursor.execute(sql("UPDATE rooms SET last_id = last_id + 1 WHERE name = ?"), (room,))
        cursor.execute(sql("SELECT last_id FROM rooms WHERE name = ?"), (room,))
        (newId,) = cursor.fetchone()
        cursor.execute(
            sql("INSERT INTO messages (room, id, author, text, created_at) VALUES (?, ?, ?, ?, ?)"),
            (room, newId, author, text, at),
        )

    d: Deferred[None] = store._run(work)
    return d


class PersistentStoreMixin(StoreContractMixin):
    """What stores that keep data do. C{newStore()} returns stores on one database per test."""

    engine: str  # the schema directory name: "sqlite" or "postgresql"
    tableExistsSQL: str  # counts the tables named %s

    def queryOne(self, sql: str) -> Deferred[Any]:
        """Fires with the first column of the first row of C{sql}, asked outside the store."""
        raise NotImplementedError

    @inlineCallbacks
    def test_survivesReopen(self) -> Generator[Deferred[Any], Any, None]:
        """What one store wrote, a new store on the same database reads, and ids continue."""
        first = self.newStore()
        yield first.open()
        yield first.append("r", "ann", "before 🎉", 1.5)
        yield first.close()
        second = yield self.openStore()
        self.assertEqual(
            (yield second.messages("r", 0, 10)), [Message(1, "r", "ann", "before 🎉", 1.5)]
        )
        self.assertEqual((yield second.append("r", "bob", "after", 2.5)).id, 2)

    @inlineCallbacks
    def test_twoStoresOneDatabase(self) -> Generator[Deferred[Any], Any, None]:
        """Two stores (as two processes would) appending to one room at once never share an id."""
        one = yield self.openStore()
        two = yield self.openStore()
        appended = yield gatherResults(
            [(one if i % 2 else two).append("shared", "x", f"t{i}", float(i)) for i in range(60)]
        )
        self.assertEqual(sorted(m.id for m in appended), list(range(1, 61)))
        self.assertEqual(len((yield one.messages("shared", 0, 100))), 60)

    @inlineCallbacks
    def test_upgrade(self) -> Generator[Deferred[Any], Any, None]:
        """open() applies only the scripts newer than the database, and records the version."""
        v1 = self.newStore(schemaDir(self, self.engine))
        yield v1.open()
        yield v1.append("r", "ann", "from version 1", 1.0)
        yield v1.close()
        self.assertEqual((yield self.queryOne("SELECT version FROM version")), PACKAGED)

        v2dir = schemaDir(self, self.engine, V2_SCRIPT)
        v2 = self.newStore(v2dir)
        yield v2.open()
        yield v2.close()
        eq = self.assertEqual
        eq((yield self.queryOne("SELECT version FROM version")), PACKAGED + 1)
        eq((yield self.queryOne("SELECT count(*) FROM version")), 1)
        eq((yield self.queryOne("SELECT count(*) FROM reactions")), 0)
        eq((yield self.queryOne("SELECT count(*) FROM messages WHERE pinned_at IS NULL")), 1)

        # Opening again applies nothing (re-creating reactions would fail), and data is intact.
        again = yield self.openStore(v2dir)
        eq([m.text for m in (yield again.messages("r", 0, 10))], ["from version 1"])
        eq((yield again.append("r", "ann", "on version 2", 2.0)).id, 2)

    @inlineCallbacks
    def test_upgradeIsAtomic(self) -> Generator[Deferred[Any], Any, None]:
        """A script that fails half-way leaves the database as it was, at the old version."""
        yield (yield self.openStore()).append("r", "ann", "kept", 1.0)
        broken = self.newStore(schemaDir(self, self.engine, BROKEN_V2_SCRIPT))
        self.addCleanup(broken.close)
        yield self.assertFailure(broken.open(), Exception)
        eq = self.assertEqual
        eq((yield self.queryOne("SELECT version FROM version")), PACKAGED)
        eq((yield self.queryOne(self.tableExistsSQL % "half_done")), 0)
        eq((yield self.queryOne("SELECT count(*) FROM messages")), 1)

    @inlineCallbacks
    def test_newerDatabaseRefused(self) -> Generator[Deferred[Any], Any, None]:
        """A database migrated by a newer pushsvc is not opened by an older one."""
        yield self.openStore(schemaDir(self, self.engine, V2_SCRIPT))
        older = self.newStore()
        self.addCleanup(older.close)
        failure = yield self.assertFailure(older.open(), SchemaError)
        self.assertIn(f"version {PACKAGED + 1}", str(failure))

    @inlineCallbacks
    def test_upgradeFromVersionOne(self) -> Generator[Deferred[Any], Any, None]:
        """A database of the first release gets the revoked sessions table, messages intact."""
        first = self.newStore(schemaDir(self, self.engine, upTo=1))
        yield first.open()
        yield legacyAppend(first, "r", "ann", "old", 1.0)
        yield first.close()
        self.assertEqual((yield self.queryOne(self.tableExistsSQL % "revoked_sessions")), 0)
        store = yield self.openStore()
        self.assertEqual((yield self.queryOne("SELECT version FROM version")), PACKAGED)
        yield store.revokeSession("s1", 100.0, 50.0)
        self.assertTrue((yield store.sessionRevoked("s1")))
        self.assertEqual([m.text for m in (yield store.messages("r", 0, 10))], ["old"])

    @inlineCallbacks
    def test_clientIdOnceAcrossStores(self) -> Generator[Deferred[Any], Any, None]:
        """The same post sent at once through two stores (two processes) is stored once."""
        one = yield self.openStore()
        two = yield self.openStore()
        copies = yield gatherResults(
            [(one if i % 2 else two).append("r", "Ann", "x", 1.0, "u1", "c-9") for i in range(12)]
        )
        self.assertEqual({m.id for m in copies}, {1})
        self.assertEqual(len((yield one.messages("r", 0, 100))), 1)

    @inlineCallbacks
    def test_upgradeFromVersionTwo(self) -> Generator[Deferred[Any], Any, None]:
        """Messages stored before version 3 read back with no user id, client id or edit."""
        old = self.newStore(schemaDir(self, self.engine, upTo=2))
        yield old.open()
        yield legacyAppend(old, "r", "ann", "old", 1.0)
        yield old.close()
        store = yield self.openStore()
        self.assertEqual((yield store.messages("r", 0, 10)), [Message(1, "r", "ann", "old", 1.0)])
        self.assertEqual((yield store.append("r", "bob", "new", 2.0, "u2", "c")).id, 2)

    @inlineCallbacks
    def test_revocationSharedByStores(self) -> Generator[Deferred[Any], Any, None]:
        """A session revoked through one store (one process) is revoked for another on the same
        database, and stays so across a reopen."""
        one = yield self.openStore()
        two = yield self.openStore()
        self.assertFalse((yield two.sessionRevoked("sid-1")))
        yield one.revokeSession("sid-1", 5000.0, 1000.0)
        self.assertTrue((yield two.sessionRevoked("sid-1")))
        yield one.close()
        three = yield self.openStore()
        self.assertTrue((yield three.sessionRevoked("sid-1")))

    @inlineCallbacks
    def test_pendingWebhooksSurviveReopen(self) -> Generator[Deferred[Any], Any, None]:
        """A webhook batch saved before a close (a restart) is pending after the reopen."""
        one = yield self.openStore()
        batch = PendingWebhook("b-1", "app", "http://127.0.0.1:9/", b'{"events":[]}', 5.0)
        yield one.saveWebhook(batch)
        yield one.close()
        two = yield self.openStore()
        self.assertEqual((yield two.pendingWebhooks(5)), [batch])


class MemoryStoreTests(StoreContractMixin, TestCase):
    def newStore(self, schema: Path | None = None) -> IStore:
        return MemoryStore()


class SQLiteStoreTests(PersistentStoreMixin, TestCase):
    engine = "sqlite"
    tableExistsSQL = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '%s'"

    def setUp(self) -> None:
        # A directory that does not exist yet: open() creates it.
        self.path = Path(self.mktemp()) / "data" / "chat.sqlite3"

    def newStore(self, schema: Path | None = None) -> IStore:
        return SQLiteStore(self.path, reactor, schema)

    def queryOne(self, sql: str) -> Deferred[Any]:
        def query() -> Any:
            connection = sqlite3.connect(self.path)
            try:
                return connection.execute(sql).fetchone()[0]
            finally:
                connection.close()

        return deferToThread(query)

    @inlineCallbacks
    def test_walMode(self) -> Generator[Deferred[Any], Any, None]:
        """The file is in WAL mode, and the description names its absolute path."""
        store = yield self.openStore()
        self.assertEqual((yield self.queryOne("PRAGMA journal_mode")), "wal")
        self.assertEqual(store.description, f"sqlite:{self.path}")

    @inlineCallbacks
    def test_unwritableDirectory(self) -> Generator[Deferred[Any], Any, None]:
        """A file that cannot be created makes open() fail with StoreUnavailable."""
        blocker = Path(self.mktemp())
        blocker.write_text("a file, not a directory")
        store = SQLiteStore(blocker / "sub" / "chat.sqlite3", reactor)
        self.addCleanup(store.close)
        yield self.assertFailure(store.open(), StoreUnavailable)

    def test_closedStoreFails(self) -> Deferred[Any]:
        """A store that is not open fails calls with StoreUnavailable instead of hanging."""
        return self.assertFailure(self.newStore().append("r", "a", "t", 1.0), StoreUnavailable)


class StatementSplitTests(SynchronousTestCase):
    def test_split(self) -> None:
        """Scripts split at statement ends, not at semicolons in strings, comments or triggers."""
        script = (
            "-- a comment; with a semicolon\n"
            "CREATE TABLE a (x TEXT DEFAULT ';'); CREATE TABLE b (y INTEGER);\n"
            "CREATE TRIGGER t AFTER INSERT ON a BEGIN INSERT INTO b VALUES (1); END;\n"
            "-- trailing comment\n"
        )
        statements = _statements(script)
        self.assertEqual(len(statements), 4)
        connection = sqlite3.connect(":memory:")
        for statement in statements:
            connection.execute(statement)
        connection.execute("INSERT INTO a DEFAULT VALUES")
        self.assertEqual(connection.execute("SELECT x FROM a").fetchone(), (";",))
        self.assertEqual(connection.execute("SELECT y FROM b").fetchone(), (1,))


class SchemaScriptTests(SynchronousTestCase):
    def write(self, *names: str) -> Path:
        directory = Path(self.mktemp())
        directory.mkdir()
        for name in names:
            (directory / name).write_text("SELECT 1;")
        return directory

    def test_packagedScripts(self) -> None:
        """Both engines ship version 1 and the scripts load from the installed package."""
        for engine in ("sqlite", "postgresql"):
            scripts = loadScripts(defaultSchema(engine))
            self.assertEqual([s.version for s in scripts], [1, 2, 3, 4])
            self.assertIn("CREATE TABLE version", scripts[0].sql)
            self.assertIn("CREATE TABLE revoked_sessions", scripts[1].sql)
            self.assertIn("CREATE UNIQUE INDEX messages_by_client_id", scripts[2].sql)

    def test_order(self) -> None:
        """Scripts sort by number; other files are ignored."""
        scripts = loadScripts(self.write("002-b.sql", "001-a.sql", "README"))
        self.assertEqual([s.name for s in scripts], ["001-a.sql", "002-b.sql"])
        self.assertEqual([s.name for s in pendingScripts(scripts, 1)], ["002-b.sql"])
        self.assertEqual(pendingScripts(scripts, 2), [])

    def test_badNumbering(self) -> None:
        """Gaps, duplicates and unnumbered scripts are refused."""
        for names in [("001-a.sql", "003-c.sql"), ("001-a.sql", "1-b.sql"), ("initial.sql",)]:
            self.assertRaises(SchemaError, loadScripts, self.write(*names))

    def test_newerDatabase(self) -> None:
        """A database newer than every script is refused with a sentence."""
        scripts = loadScripts(self.write("001-a.sql"))
        error = self.assertRaises(SchemaError, pendingScripts, scripts, 3)
        self.assertIn("version 3", str(error))


class StoreURLTests(SynchronousTestCase):
    dataDir = Path("/srv/pushsvc-data")

    def test_memory(self) -> None:
        self.assertIsInstance(storeFromURL("memory:", self.dataDir, reactor), MemoryStore)

    def test_sqliteDefault(self) -> None:
        """No URL, or sqlite: alone, means pushsvc.sqlite3 in the data directory."""
        for url in (None, "sqlite:"):
            store = storeFromURL(url, self.dataDir, reactor)
            self.assertIsInstance(store, SQLiteStore)
            self.assertEqual(store.description, "sqlite:/srv/pushsvc-data/pushsvc.sqlite3")

    def test_sqlitePaths(self) -> None:
        """A relative path is inside the data directory, an absolute one is itself."""
        rel = storeFromURL("sqlite:sub/chat.db", self.dataDir, reactor)
        self.assertEqual(rel.description, "sqlite:/srv/pushsvc-data/sub/chat.db")
        absolute = storeFromURL("sqlite:/var/lib/chat.db", self.dataDir, reactor)
        self.assertEqual(absolute.description, "sqlite:/var/lib/chat.db")

    def test_postgresql(self) -> None:
        """Both URL spellings make a PostgreSQL store whose description hides the password."""
        for url in (
            "postgresql://pushsvc:s3cret@db.example:5433/chat?sslmode=require",
            "postgres://pushsvc:s3cret@db.example:5433/chat",
        ):
            store = storeFromURL(url, self.dataDir, reactor)
            self.assertIsInstance(store, PostgreSQLStore)
            self.assertEqual(store.description, "postgresql://db.example:5433/chat")
            self.assertEqual(validateStoreURL(url), url)

    def test_unknown(self) -> None:
        """Unknown or malformed URLs raise ValueError with a sentence and no password."""
        for url in (
            "",
            "mysql://root:s3cret@db/chat",
            "/just/a/path",
            "memory:extra",
            "postgresql:chat",
            "postgresql://root:s3cret@db/chat?no_such_option=1",
        ):
            error = self.assertRaises(ValueError, storeFromURL, url, self.dataDir, reactor)
            self.assertNotIn("s3cret", str(error))
            self.assertTrue(str(error)[0].isupper() and str(error).endswith("."), str(error))
            self.assertRaises(ValueError, validateStoreURL, url)


# -- PostgreSQL -------------------------------------------------------------------------------

_pgProblem: list[str] = []


def _adminConnect() -> psycopg.Connection[Any]:
    return psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)


class PostgreSQLSchemaMixin(_MixinBase):
    """Gives each test an empty schema of its own; C{self.conninfo} selects it."""

    @inlineCallbacks
    def setUp(self) -> Generator[Deferred[Any], Any, None]:  # type: ignore[override]
        if _pgProblem:
            requireService("PostgreSQL", _pgProblem[0])
        self.schemaName = f"pushsvc_test_{uuid.uuid4().hex[:16]}"

        def create() -> None:
            with _adminConnect() as connection:
                connection.execute(f"CREATE SCHEMA {self.schemaName}")

        try:
            yield deferToThread(create)
        except psycopg.OperationalError as e:
            _pgProblem.append(f"not reachable at {PG_URL}: {str(e).strip().splitlines()[0]}")
            requireService("PostgreSQL", _pgProblem[0])
        self.addCleanup(deferToThread, self._dropSchema)
        self.conninfo = make_conninfo(PG_URL, options=f"-c search_path={self.schemaName}")

    def _dropSchema(self) -> None:
        with _adminConnect() as connection:
            connection.execute(f"DROP SCHEMA {self.schemaName} CASCADE")


class PostgreSQLStoreTests(PostgreSQLSchemaMixin, PersistentStoreMixin, TestCase):
    engine = "postgresql"
    tableExistsSQL = (
        "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() AND tablename = '%s'"
    )

    def newStore(self, schema: Path | None = None) -> IStore:
        return PostgreSQLStore(self.conninfo, reactor, schema)

    def queryOne(self, sql: str) -> Deferred[Any]:
        def query() -> Any:
            with psycopg.connect(self.conninfo, autocommit=True) as connection:
                row = connection.execute(sql).fetchone()
                assert row is not None
                return row[0]

        return deferToThread(query)

    @inlineCallbacks
    def test_manyProcessesOpenAtOnce(self) -> Generator[Deferred[Any], Any, None]:
        """Several stores migrating one empty database at once create the schema once."""
        stores = [self.newStore() for _ in range(4)]
        for store in stores:
            self.addCleanup(store.close)
        yield gatherResults([store.open() for store in stores])
        self.assertEqual((yield self.queryOne("SELECT count(*) FROM version")), 1)


# -- PostgreSQL outages ------------------------------------------------------------------------


class _Pipe(Protocol):
    """One side of a proxied connection: writes what it reads to its peer."""

    def __init__(self, proxy: CuttableProxy, peer: _Pipe | None = None) -> None:
        self.proxy = proxy
        self.peer = peer

    def connectionMade(self) -> None:
        self.proxy.live.add(self)
        if self.peer is None:
            # Accepted: read nothing until the onward connection is up.
            self.transport.pauseProducing()  # type: ignore[union-attr]
            onward = ClientFactory.forProtocol(lambda: _Pipe(self.proxy, self))
            onward.clientConnectionFailed = lambda c, r: self.transport.loseConnection()  # type: ignore
            reactor.connectTCP(self.proxy.host, self.proxy.port, onward)  # type: ignore
        elif self.peer in self.proxy.live:
            self.peer.peer = self
            self.peer.transport.resumeProducing()  # type: ignore[union-attr]
        else:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        assert self.peer is not None
        self.peer.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.proxy.live.discard(self)
        if self.peer is not None:
            self.peer.transport.loseConnection()  # type: ignore[union-attr]
        self.proxy.checkIdle()


class CuttableProxy:
    """A TCP proxy on a spare 127.0.0.1 port to the PostgreSQL server, that we can cut."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.live: set[_Pipe] = set()
        self.listening: Any = None
        self.listenPort = 0
        self._idleWaiters: list[Deferred[None]] = []

    def start(self) -> None:
        factory = Factory.forProtocol(lambda: _Pipe(self))
        self.listening = reactor.listenTCP(self.listenPort, factory, interface="127.0.0.1")  # type: ignore
        self.listenPort = self.listening.getHost().port

    def dropConnections(self) -> Deferred[None]:
        """Abort every proxied connection, as a crashed server or network would."""
        for pipe in list(self.live):
            pipe.transport.abortConnection()  # type: ignore[union-attr]
        d: Deferred[None] = Deferred()
        self._idleWaiters.append(d)
        self.checkIdle()
        return d

    def checkIdle(self) -> None:
        if not self.live:
            waiters, self._idleWaiters = self._idleWaiters, []
            for d in waiters:
                d.callback(None)

    def cut(self) -> Deferred[Any]:
        """Stop accepting (new connections are refused) and drop the open ones."""
        listening, self.listening = self.listening, None
        stopped = listening.stopListening() if listening is not None else succeed(None)
        return gatherResults([stopped, self.dropConnections()])


def _closedPort() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


class PostgreSQLUnreachableTests(TestCase):
    @inlineCallbacks
    def test_closedPort(self) -> Generator[Deferred[Any], Any, None]:
        """With nothing listening, open() and ping() fail at once with StoreUnavailable, and
        neither the failure nor the description shows the password."""
        url = f"postgresql://pushsvc:s3cret@127.0.0.1:{_closedPort()}/test"
        store = storeFromURL(url, Path("."), reactor)
        self.addCleanup(store.close)
        failure = yield self.assertFailure(store.open(), StoreUnavailable)
        self.assertNotIn("s3cret", str(failure))
        self.assertNotIn("s3cret", store.description)
        yield self.assertFailure(store.ping(), StoreUnavailable)


class PostgreSQLOutageTests(PostgreSQLSchemaMixin, TestCase):
    @inlineCallbacks
    def setUp(self) -> Generator[Deferred[Any], Any, None]:  # type: ignore[override]
        yield super().setUp()
        params = psycopg.conninfo.conninfo_to_dict(self.conninfo)
        self.proxy = CuttableProxy(
            str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432)
        )
        self.proxy.start()
        self.addCleanup(self.proxy.cut)
        self.store = PostgreSQLStore(
            make_conninfo(self.conninfo, host="127.0.0.1", port=self.proxy.listenPort), reactor
        )
        yield self.store.open()
        self.addCleanup(self.store.close)

    @inlineCallbacks
    def test_healsAfterOutage(self) -> Generator[Deferred[Any], Any, None]:
        """While the server is unreachable calls fail with StoreUnavailable; once it is back the
        next call succeeds, with no restart, and nothing was lost."""
        yield self.store.append("r", "ann", "before", 1.0)
        yield self.proxy.cut()
        yield self.assertFailure(self.store.append("r", "ann", "during", 2.0), StoreUnavailable)
        yield self.assertFailure(self.store.ping(), StoreUnavailable)
        self.proxy.start()
        yield self.store.ping()
        self.assertEqual((yield self.store.append("r", "ann", "after", 3.0)).id, 2)
        self.assertEqual(
            [m.text for m in (yield self.store.messages("r", 0, 10))], ["before", "after"]
        )

    @inlineCallbacks
    def test_deadIdleConnectionReplaced(self) -> Generator[Deferred[Any], Any, None]:
        """A pooled connection that died while idle (server restart) is replaced, so the first
        call afterwards already succeeds, and is stored once."""
        yield gatherResults([self.store.append("r", "ann", f"{i}", 1.0) for i in range(4)])
        yield self.proxy.dropConnections()
        self.assertEqual((yield self.store.append("r", "ann", "after", 2.0)).id, 5)
        self.assertEqual(len((yield self.store.messages("r", 0, 10))), 5)
