"""An in-memory L{IStore} for unit tests: every Deferred has already fired."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from pushsvc.store.interface import IStore, Message, PendingWebhook, RoomSummary


@implementer(IStore)
class MemoryStore:
    """Keeps messages in a dict; nothing survives the object."""

    description = "memory:"

    def __init__(self) -> None:
        self._messages: dict[str, list[Message]] = {}
        self._revoked: dict[str, float] = {}  # session id -> when its cookie expires
        self._webhooks: dict[str, PendingWebhook] = {}  # insertion order is age order

    def open(self) -> Deferred[None]:
        return succeed(None)

    def close(self) -> Deferred[None]:
        return succeed(None)

    def append(self, room: str, author: str, text: str, createdAt: float) -> Deferred[Message]:
        stored = self._messages.setdefault(room, [])
        message = Message(len(stored) + 1, room, author, text, createdAt)
        stored.append(message)
        return succeed(message)

    def messages(self, room: str, after: int, limit: int) -> Deferred[list[Message]]:
        # Ids are 1, 2, 3..., so message N sits at index N - 1.
        start = max(after, 0)
        return succeed(self._messages.get(room, [])[start : start + max(limit, 0)])

    def latest(self, room: str, limit: int) -> Deferred[list[Message]]:
        stored = self._messages.get(room, [])
        return succeed(stored[max(len(stored) - limit, 0) :] if limit > 0 else [])

    def rooms(self, limit: int) -> Deferred[list[RoomSummary]]:
        summaries = [
            RoomSummary(room, stored[-1].id, stored[-1].createdAt)
            for room, stored in self._messages.items()
        ]
        # Like the SQL engines: most recent first, ties by name.
        summaries.sort(key=lambda s: (-s.lastAt, s.name))
        return succeed(summaries[: max(limit, 0)])

    def revokeSession(self, sessionId: str, expiresAt: float, now: float) -> Deferred[None]:
        self._revoked.setdefault(sessionId, expiresAt)
        for old in [s for s, expires in self._revoked.items() if expires < now]:
            del self._revoked[old]
        return succeed(None)

    def sessionRevoked(self, sessionId: str) -> Deferred[bool]:
        return succeed(sessionId in self._revoked)

    def saveWebhook(self, batch: PendingWebhook) -> Deferred[None]:
        self._webhooks.setdefault(batch.id, batch)
        return succeed(None)

    def deleteWebhook(self, batchId: str) -> Deferred[None]:
        self._webhooks.pop(batchId, None)
        return succeed(None)

    def pendingWebhooks(self, limit: int) -> Deferred[list[PendingWebhook]]:
        batches = sorted(self._webhooks.values(), key=lambda b: b.createdAt)
        return succeed(batches[: max(limit, 0)])

    def ping(self) -> Deferred[None]:
        return succeed(None)
