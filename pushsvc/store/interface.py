"""The chat message store seam: one Deferred-based interface, several engines."""

# zope.interface methods are declared without self.
# ruff: noqa: N805

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface


@dataclass(frozen=True)
class Message:
    """A stored chat message; C{id} increases within a room, starting at 1."""

    id: int
    room: str
    author: str
    text: str
    createdAt: float  # seconds since the epoch, UTC

    def toJSON(self) -> dict[str, Any]:
        at = datetime.fromtimestamp(self.createdAt, UTC)
        return {
            "id": self.id,
            "room": self.room,
            "author": self.author,
            "text": self.text,
            "created_at": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }


@dataclass(frozen=True)
class RoomSummary:
    name: str
    lastId: int
    lastAt: float

    def toJSON(self) -> dict[str, Any]:
        return {"name": self.name, "last_id": self.lastId}


class StoreUnavailable(Exception):  # noqa: N818 -- named for what the caller answers (503)
    """The store's engine cannot be reached; the caller should answer 503."""


class IStore(Interface):
    """
    Durable chat messages. Every method returns a Deferred; engines that do I/O run it off the
    reactor thread. A Deferred that fires means the write is durable.
    """

    description = Attribute("A short human description of the engine, e.g. 'sqlite:/path'.")

    def open() -> Deferred[None]:
        """Connect and migrate the schema to the newest version. Fires with None."""

    def close() -> Deferred[None]:
        """Release connections. Fires with None."""

    def append(room: str, author: str, text: str, createdAt: float) -> Deferred[Message]:
        """Store a message with the next id of C{room}. Fires with the stored L{Message}."""

    def messages(room: str, after: int, limit: int) -> Deferred[list[Message]]:
        """Fires with up to C{limit} messages of C{room} with id > C{after}, oldest first."""

    def latest(room: str, limit: int) -> Deferred[list[Message]]:
        """Fires with the newest C{limit} messages of C{room}, oldest first."""

    def rooms(limit: int) -> Deferred[list[RoomSummary]]:
        """Fires with up to C{limit} L{RoomSummary}s, most recently active first."""

    def revokeSession(sessionId: str, expiresAt: float, now: float) -> Deferred[None]:
        """
        Record that chat session C{sessionId} is signed out; its cookie would expire at
        C{expiresAt} anyway, after which the record may go (records older than C{now} are
        pruned). Revoking twice is no error. Fires with None once it is durable.
        """

    def sessionRevoked(sessionId: str) -> Deferred[bool]:
        """Fires with True when C{sessionId} was revoked (and its cookie not yet expired)."""

    def ping() -> Deferred[None]:
        """Fires with None when the engine answers; fails with L{StoreUnavailable} otherwise."""
