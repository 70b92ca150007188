"""An in-memory L{IStore} for unit tests: every Deferred has already fired."""

from __future__ import annotations

from dataclasses import replace

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
        self._byClientId: dict[tuple[str, str], tuple[str, int]] = {}  # -> (room, id)
        self._created: dict[str, float] = {}  # empty rooms made by createRoom -> when
        self._webhooks: dict[str, PendingWebhook] = {}  # insertion order is age order

    def open(self) -> Deferred[None]:
        return succeed(None)

    def close(self) -> Deferred[None]:
        return succeed(None)

    def append(
        self,
        room: str,
        author: str,
        text: str,
        createdAt: float,
        userId: str = "",
        clientId: str | None = None,
    ) -> Deferred[Message]:
        if clientId is not None and (userId, clientId) in self._byClientId:
            firstRoom, firstId = self._byClientId[userId, clientId]
            return succeed(replace(self._messages[firstRoom][firstId - 1], replayed=True))
        stored = self._messages.setdefault(room, [])
        message = Message(len(stored) + 1, room, author, text, createdAt, userId, clientId)
        stored.append(message)
        if clientId is not None:
            self._byClientId[userId, clientId] = (room, message.id)
        return succeed(message)

    def before(self, room: str, before: int, limit: int) -> Deferred[list[Message]]:
        end = min(max(before - 1, 0), len(self._messages.get(room, [])))
        return succeed(self._messages.get(room, [])[max(end - max(limit, 0), 0) : end])

    def edit(
        self, room: str, messageId: int, userId: str, text: str | None, editedAt: float
    ) -> Deferred[Message | None]:
        stored = self._messages.get(room, [])
        if not 1 <= messageId <= len(stored):
            return succeed(None)
        message = stored[messageId - 1]
        if message.userId == userId and not message.deleted:
            message = replace(message, text=text or "", editedAt=editedAt, deleted=text is None)
            stored[messageId - 1] = message
        return succeed(message)

    def createRoom(self, room: str, createdAt: float) -> Deferred[bool]:
        if room in self._messages or room in self._created:
            return succeed(False)
        self._created[room] = createdAt
        return succeed(True)

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
            if stored
        ]
        summaries += [
            RoomSummary(room, 0, at)
            for room, at in self._created.items()
            if room not in self._messages
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
