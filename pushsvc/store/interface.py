"""The chat message store seam: one Deferred-based interface, several engines."""

# zope.interface methods are declared without self.
# ruff: noqa: N805

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from zope.interface import Attribute, Interface


@dataclass(frozen=True)
class Message:
    """
    A stored chat message; C{id} increases within a room, starting at 1. C{text} is the current
    text (after edits; empty once deleted).
    """

    id: int
    room: str
    author: str
    text: str
    createdAt: float  # seconds since the epoch, UTC
    userId: str = ""
    clientId: str | None = None  # the id the author's page gave it when typed
    editedAt: float | None = None
    deleted: bool = False
    # True when append found the message already stored under its client id (a retried post).
    replayed: bool = field(default=False, compare=False)

    def toJSON(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "room": self.room,
            "author": self.author,
            "user_id": self.userId,
            "client_id": self.clientId,
            "text": self.text,
            "created_at": _iso(self.createdAt),
            "edited_at": None if self.editedAt is None else _iso(self.editedAt),
            "deleted": self.deleted,
        }


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class RoomSummary:
    name: str
    lastId: int
    lastAt: float

    def toJSON(self) -> dict[str, Any]:
        return {"name": self.name, "last_id": self.lastId}


@dataclass(frozen=True)
class PendingWebhook:
    """A webhook batch not yet accepted by its receiver: kept so a restart does not lose it."""

    id: str
    appId: str
    url: str
    body: bytes  # the raw JSON body, signed again at each attempt
    createdAt: float  # seconds since the epoch; retries stop some minutes after it


class StoreUnavailable(Exception):  # noqa: N818 -- named for what the caller answers (503)
    """The store's engine cannot be reached; the caller should answer 503."""


class IStore(Interface):
    """
    Durable chat messages. Every method returns a Deferred; engines that do I/O run it off the
    reactor thread. A Deferred that fires means the write is durable.
    """

    description = Attribute("A short human description of the engine, e.g. 'sqlite:/path'.")

    def open() -> Any:
        """Connect and migrate the schema to the newest version. Fires with None."""

    def close() -> Any:
        """Release connections. Fires with None."""

    def append(
        room: str,
        author: str,
        text: str,
        createdAt: float,
        userId: str = "",
        clientId: str | None = None,
    ) -> Any:
        """
        Store a message with the next id of C{room}. Fires with the stored L{Message}. When
        C{clientId} is given and C{userId} already has a message with it (a retried post, even
        one running at the same time), nothing is stored and it fires with that first message,
        marked C{replayed}.
        """

    def messages(room: str, after: int, limit: int) -> Any:
        """Fires with up to C{limit} messages of C{room} with id > C{after}, oldest first."""

    def before(room: str, before: int, limit: int) -> Any:
        """Fires with the newest C{limit} messages of C{room} with id < C{before}, oldest
        first: the page before one the reader holds."""

    def edit(room: str, messageId: int, userId: str, text: str | None, editedAt: float) -> Any:
        """
        Replace the text of message C{messageId} of C{room} (C{text} None: delete it) if
        C{userId} wrote it and it is not deleted. Fires with the message as it now is (unchanged
        when someone else wrote it or it was deleted: the caller tells by its C{userId} and
        C{deleted}), or None when there is no such message.
        """

    def createRoom(room: str, createdAt: float) -> Any:
        """Record an empty room so that it is listed. Fires with True when it is new, False
        when it existed."""

    def latest(room: str, limit: int) -> Any:
        """Fires with the newest C{limit} messages of C{room}, oldest first."""

    def rooms(limit: int) -> Any:
        """Fires with up to C{limit} L{RoomSummary}s, most recently active (or created)
        first; empty rooms made with L{createRoom} are included."""

    def revokeSession(sessionId: str, expiresAt: float, now: float) -> Any:
        """
        Record that chat session C{sessionId} is signed out; its cookie would expire at
        C{expiresAt} anyway, after which the record may go (records older than C{now} are
        pruned). Revoking twice is no error. Fires with None once it is durable.
        """

    def sessionRevoked(sessionId: str) -> Any:
        """Fires with True when C{sessionId} was revoked (and its cookie not yet expired)."""

    def saveWebhook(batch: PendingWebhook) -> Any:
        """Keep L{PendingWebhook} C{batch} (saving an id twice is no error). Fires with None."""

    def deleteWebhook(batchId: str) -> Any:
        """Forget the pending webhook C{batchId} (delivered or dropped). Fires with None."""

    def pendingWebhooks(limit: int) -> Any:
        """Fires with up to C{limit} L{PendingWebhook}s, oldest first."""

    def ping() -> Any:
        """Fires with None when the engine answers; fails with L{StoreUnavailable} otherwise."""
