"""
The chat's SQL, shared by the engines. Each function runs inside a transaction in a worker
thread. Statements are written with C{?} placeholders; C{Dialect.sql} turns them into what the
engine's driver wants (psycopg spells them C{%s}).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.internet.defer import Deferred

from pushsvc.store.interface import Message, PendingWebhook, RoomSummary

T = TypeVar("T")


@dataclass(frozen=True)
class Dialect:
    placeholder: str
    returning: bool = True  # UPDATE ... RETURNING (SQLite before 3.35 lacks it)
    beginWrite: str | None = None  # the statement that opens a writing transaction, if any
    lockRoom: str = ""  # appended to a SELECT to lock the row (" FOR UPDATE"), if needed

    def sql(self, text: str) -> str:
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)


_COLUMNS = "id, author, text, created_at, user_id, client_id, edited_at, deleted"


def _message(room: str, row: Any, replayed: bool = False) -> Message:
    i, author, text, createdAt, userId, clientId, editedAt, deleted = row
    return Message(
        i, room, author, text, createdAt, userId, clientId, editedAt, bool(deleted), replayed
    )


def _byClientId(cursor: Any, d: Dialect, userId: str, clientId: str) -> Message | None:
    cursor.execute(
        d.sql(f"SELECT room, {_COLUMNS} FROM messages WHERE user_id = ? AND client_id = ?"),
        (userId, clientId),
    )
    row = cursor.fetchone()
    return None if row is None else _message(row[0], row[1:], replayed=True)


def append(
    cursor: Any,
    d: Dialect,
    room: str,
    author: str,
    text: str,
    createdAt: float,
    userId: str = "",
    clientId: str | None = None,
) -> Message:
    """Store a message with the room's next id, or find the one stored under its client id."""
    if d.beginWrite:
        cursor.execute(d.beginWrite)
    if clientId is not None:
        # The usual retry: the first post was stored, its answer lost.
        first = _byClientId(cursor, d, userId, clientId)
        if first is not None:
            return first
    cursor.execute(
        d.sql("INSERT INTO rooms (name, last_id, last_at) VALUES (?, 0, ?) ON CONFLICT DO NOTHING"),
        (room, createdAt),
    )
    if clientId is not None and d.lockRoom:
        # Two copies of one post at once: the second waits here for the first to commit, then
        # finds it (each statement sees what was committed before it ran).
        cursor.execute(d.sql("SELECT last_id FROM rooms WHERE name = ?" + d.lockRoom), (room,))
        first = _byClientId(cursor, d, userId, clientId)
        if first is not None:
            return first
    # The row lock taken by the UPDATE is held until COMMIT: other writers to the room, in any
    # process, wait and then see our last_id.
    update = d.sql("UPDATE rooms SET last_id = last_id + 1, last_at = ? WHERE name = ?")
    if d.returning:
        cursor.execute(update + " RETURNING last_id", (createdAt, room))
    else:
        cursor.execute(update, (createdAt, room))
        cursor.execute(d.sql("SELECT last_id FROM rooms WHERE name = ?"), (room,))
    (newId,) = cursor.fetchone()
    cursor.execute(
        d.sql(
            "INSERT INTO messages (room, id, author, text, created_at, user_id, client_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)"
        ),
        (room, newId, author, text, createdAt, userId, clientId),
    )
    return Message(newId, room, author, text, createdAt, userId, clientId)


def messages(cursor: Any, d: Dialect, room: str, after: int, limit: int) -> list[Message]:
    cursor.execute(
        d.sql(f"SELECT {_COLUMNS} FROM messages WHERE room = ? AND id > ? ORDER BY id LIMIT ?"),
        (room, after, max(limit, 0)),
    )
    return [_message(room, row) for row in cursor.fetchall()]


def before(cursor: Any, d: Dialect, room: str, before: int, limit: int) -> list[Message]:
    # A backwards range scan of the primary key (room, id): as fast at id 1 as at the newest.
    cursor.execute(
        d.sql(
            f"SELECT {_COLUMNS} FROM messages WHERE room = ? AND id < ? ORDER BY id DESC LIMIT ?"
        ),
        (room, before, max(limit, 0)),
    )
    return [_message(room, row) for row in reversed(cursor.fetchall())]


def latest(cursor: Any, d: Dialect, room: str, limit: int) -> list[Message]:
    cursor.execute(
        d.sql(f"SELECT {_COLUMNS} FROM messages WHERE room = ? ORDER BY id DESC LIMIT ?"),
        (room, max(limit, 0)),
    )
    return [_message(room, row) for row in reversed(cursor.fetchall())]


def edit(
    cursor: Any,
    d: Dialect,
    room: str,
    messageId: int,
    userId: str,
    text: str | None,
    editedAt: float,
) -> Message | None:
    if d.beginWrite:
        cursor.execute(d.beginWrite)
    cursor.execute(
        d.sql(
            "UPDATE messages SET text = ?, edited_at = ?, deleted = ?"
            " WHERE room = ? AND id = ? AND user_id = ? AND NOT deleted"
        ),
        (text or "", editedAt, text is None, room, messageId, userId),
    )
    cursor.execute(
        d.sql(f"SELECT {_COLUMNS} FROM messages WHERE room = ? AND id = ?"), (room, messageId)
    )
    row = cursor.fetchone()
    return None if row is None else _message(room, row)


def createRoom(cursor: Any, d: Dialect, room: str, createdAt: float) -> bool:
    if d.beginWrite:
        cursor.execute(d.beginWrite)
    cursor.execute(d.sql("SELECT 1 FROM rooms WHERE name = ?"), (room,))
    if cursor.fetchone() is not None:
        return False
    cursor.execute(
        d.sql("INSERT INTO rooms (name, last_id, last_at) VALUES (?, 0, ?) ON CONFLICT DO NOTHING"),
        (room, createdAt),
    )
    return bool(cursor.rowcount == 1)


def rooms(cursor: Any, d: Dialect, limit: int) -> list[RoomSummary]:
    cursor.execute(
        d.sql("SELECT name, last_id, last_at FROM rooms ORDER BY last_at DESC, name LIMIT ?"),
        (max(limit, 0),),
    )
    return [RoomSummary(n, i, a) for n, i, a in cursor.fetchall()]


def revokeSession(cursor: Any, d: Dialect, sessionId: str, expiresAt: float, now: float) -> None:
    if d.beginWrite:
        cursor.execute(d.beginWrite)
    cursor.execute(
        d.sql("INSERT INTO revoked_sessions (id, expires_at) VALUES (?, ?) ON CONFLICT DO NOTHING"),
        (sessionId, expiresAt),
    )
    cursor.execute(d.sql("DELETE FROM revoked_sessions WHERE expires_at < ?"), (now,))


def sessionRevoked(cursor: Any, d: Dialect, sessionId: str) -> bool:
    cursor.execute(d.sql("SELECT 1 FROM revoked_sessions WHERE id = ?"), (sessionId,))
    return cursor.fetchone() is not None


def saveWebhook(cursor: Any, d: Dialect, b: PendingWebhook) -> None:
    if d.beginWrite:
        cursor.execute(d.beginWrite)
    cursor.execute(
        d.sql(
            "INSERT INTO pending_webhooks (id, app_id, url, body, created_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
        ),
        (b.id, b.appId, b.url, b.body.decode("utf-8"), b.createdAt),
    )


def deleteWebhook(cursor: Any, d: Dialect, batchId: str) -> None:
    if d.beginWrite:
        cursor.execute(d.beginWrite)
    cursor.execute(d.sql("DELETE FROM pending_webhooks WHERE id = ?"), (batchId,))


def pendingWebhooks(cursor: Any, d: Dialect, limit: int) -> list[PendingWebhook]:
    cursor.execute(
        d.sql(
            "SELECT id, app_id, url, body, created_at FROM pending_webhooks"
            " ORDER BY created_at, id LIMIT ?"
        ),
        (max(limit, 0),),
    )
    return [PendingWebhook(i, a, u, b.encode("utf-8"), c) for i, a, u, b, c in cursor.fetchall()]


def ping(cursor: Any, d: Dialect) -> None:
    cursor.execute("SELECT 1")
    cursor.fetchone()


class SQLStore:
    """
    The L{IStore} methods the SQL engines share: each runs one of the functions above in a
    transaction through the engine's C{_run}, which fires with its result (or fails with
    L{StoreUnavailable}).
    """

    dialect: Dialect

    def _run(self, work: Callable[..., T], *args: Any) -> Deferred[T]:
        raise NotImplementedError

    def append(
        self,
        room: str,
        author: str,
        text: str,
        createdAt: float,
        userId: str = "",
        clientId: str | None = None,
    ) -> Deferred[Message]:
        return self._run(append, self.dialect, room, author, text, createdAt, userId, clientId)

    def messages(self, room: str, after: int, limit: int) -> Deferred[list[Message]]:
        return self._run(messages, self.dialect, room, after, limit)

    def before(self, room: str, before_: int, limit: int) -> Deferred[list[Message]]:
        return self._run(before, self.dialect, room, before_, limit)

    def edit(
        self, room: str, messageId: int, userId: str, text: str | None, editedAt: float
    ) -> Deferred[Message | None]:
        return self._run(edit, self.dialect, room, messageId, userId, text, editedAt)

    def createRoom(self, room: str, createdAt: float) -> Deferred[bool]:
        return self._run(createRoom, self.dialect, room, createdAt)

    def latest(self, room: str, limit: int) -> Deferred[list[Message]]:
        return self._run(latest, self.dialect, room, limit)

    def rooms(self, limit: int) -> Deferred[list[RoomSummary]]:
        return self._run(rooms, self.dialect, limit)

    def revokeSession(self, sessionId: str, expiresAt: float, now: float) -> Deferred[None]:
        return self._run(revokeSession, self.dialect, sessionId, expiresAt, now)

    def sessionRevoked(self, sessionId: str) -> Deferred[bool]:
        return self._run(sessionRevoked, self.dialect, sessionId)

    def saveWebhook(self, batch: PendingWebhook) -> Deferred[None]:
        return self._run(saveWebhook, self.dialect, batch)

    def deleteWebhook(self, batchId: str) -> Deferred[None]:
        return self._run(deleteWebhook, self.dialect, batchId)

    def pendingWebhooks(self, limit: int) -> Deferred[list[PendingWebhook]]:
        return self._run(pendingWebhooks, self.dialect, limit)

    def ping(self) -> Deferred[None]:
        return self._run(ping, self.dialect)
