"""
The chat app's REST API, mounted at C{/api}:

    GET  /api/config                      app key and WebSocket path for the page
    GET  /api/session                     who am I: {"signed_in": true, "user_id", "name"}, or
                                          200 {"signed_in": false} without a (live) session
    POST /api/session {"name"}            sign in: sets the signed session cookie (a signed-in
                                          user who changes name keeps her user id)
    DELETE /api/session                   sign out: revokes the session everywhere
    GET  /api/rooms                       rooms, most recently active (or created) first
    POST /api/rooms {"name"}              create a room: 201 (200 if it existed); told on the lobby
    GET  /api/rooms/{room}/messages       ?after=ID or ?before=ID (not both), &limit=N; the
                                          newest page without either; oldest first in each reply
    POST /api/rooms/{room}/messages       {"text", "client_id"?}: stored durably, then published;
                                          201, or 200 with the first message when this user
                                          already posted this client_id (a retry); 429 with
                                          Retry-After above the session's message rate
    PATCH /api/rooms/{room}/messages/{id} {"text"}: edit one's own message (403 someone else's,
                                          404 none or deleted)
    DELETE /api/rooms/{room}/messages/{id} delete one's own message (its text goes)
    POST /api/pusher/auth                 signs the room channels and the lobby for the page

Live events, all JSON: on C{presence-room-ROOM} "message" (a new message) and "message-updated"
(an edit or a delete: the message as it now is); on the lobby channel C{private-chat-lobby}
"room-created" {"name"} and "room-activity" {"name", "last_id"} (unread marks come from it).

Every reply is JSON; every error is C{{"error": "<sentence>"}}.

A signed-out session's id is kept in the store (L{IStore.revokeSession}) until its cookie would
expire, and every check of a session (posting, channel auth, GET /api/session) asks the store, so
signing out on one process holds on all of them: a revoked cookie gets 401.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from pushsvc.apps import Apps
from pushsvc.http.proxy import clientOf
from pushsvc.http.util import (
    HTTPError,
    JSONResource,
    errorBody,
    formArgs,
    intArg,
    parseJSONObject,
    queryArg,
    readBody,
    requireJSONContentType,
)
from pushsvc.interfaces import IHub
from pushsvc.names import isChannel, isRoom, isSocketId
from pushsvc.ratelimit import RateLimiter
from pushsvc.session import COOKIE_NAME, MAX_AGE, Session, SessionSigner
from pushsvc.signing import channelAuth
from pushsvc.store import IStore, Message, StoreUnavailable

log = Logger()

MAX_NAME = 40  # visible characters (combining marks ride on the one before them)
MAX_NAME_CODEPOINTS = 3 * MAX_NAME
MESSAGE_BURST = 20  # messages a session may post at once before its per-minute rate applies
MAX_TEXT = 2000
DEFAULT_LIMIT = 50
MAX_LIMIT = 200


LOBBY_CHANNEL = "private-chat-lobby"  # new rooms and room activity, for every signed-in page
MAX_CLIENT_ID = 64
_CLIENT_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def validClientId(raw: object) -> str | None:
    """A message's client id: absent (None), or 1 to 64 of A-Z a-z 0-9 - _."""
    if raw is None:
        return None
    if (
        not isinstance(raw, str)
        or not 1 <= len(raw) <= MAX_CLIENT_ID
        or not set(raw) <= _CLIENT_ID_CHARS
    ):
        raise HTTPError(400, f"client_id must be 1 to {MAX_CLIENT_ID} letters, digits, '-' or '_'.")
    return raw


def roomChannel(room: str) -> str:
    """The presence channel on which a room's messages are published."""
    return f"presence-room-{room}"


def _hasControl(text: str, allowed: str = "") -> bool:
    """Control characters, and lone surrogates (which no engine can store), are refused."""
    return any(unicodedata.category(c) in ("Cc", "Cs") and c not in allowed for c in text)


# Characters that reorder or hide text: a name must look like what it is.
BIDI_CONTROLS = frozenset(
    "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
)
ZERO_WIDTH = frozenset("\u200b\u200c\u200d\u2060\ufeff")
# Control, format, surrogate, private-use and unassigned code points, line/paragraph separators.
_NAME_REFUSED_CATEGORIES = frozenset(("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"))


def validName(raw: object) -> str:
    """
    A display name, normalised: NFC, runs of white space made one space and trimmed, 1 to 40
    visible characters. Bidi controls, zero-width and other control or format characters are
    refused with a sentence (400), not silently dropped, so a name shows as it was typed.
    """
    if not isinstance(raw, str):
        raise HTTPError(400, "The name must be a string.")
    if len(raw) > 4 * MAX_NAME_CODEPOINTS:
        raise HTTPError(400, f"The name must be 1 to {MAX_NAME} characters long.")
    name = unicodedata.normalize("NFC", raw)
    for c in name:
        if c in BIDI_CONTROLS:
            raise HTTPError(
                400,
                f"The name must not contain bidirectional text controls (such as U+{ord(c):04X}).",
            )
        if c in ZERO_WIDTH:
            raise HTTPError(
                400, f"The name must not contain zero-width characters (such as U+{ord(c):04X})."
            )
        if unicodedata.category(c) in _NAME_REFUSED_CATEGORIES:
            raise HTTPError(400, "The name must not contain control or formatting characters.")
    name = " ".join(name.split())
    visible = sum(1 for c in name if not unicodedata.category(c).startswith("M"))
    if not name or unicodedata.category(name[0]).startswith("M") or not 1 <= visible <= MAX_NAME:
        raise HTTPError(400, f"The name must be 1 to {MAX_NAME} visible characters long.")
    if len(name) > MAX_NAME_CODEPOINTS:
        raise HTTPError(400, "The name has too many combining marks.")
    return name


def validText(raw: object) -> str:
    if not isinstance(raw, str):
        raise HTTPError(400, "The message text must be a string.")
    if not raw.strip():
        raise HTTPError(400, "The message is empty.")
    if len(raw) > MAX_TEXT:
        raise HTTPError(400, f"The message is longer than {MAX_TEXT} characters.")
    if _hasControl(raw, allowed="\n\t"):
        raise HTTPError(400, "The message must not contain control characters.")
    return raw


def validRoom(raw: str) -> str:
    if not isRoom(raw):
        raise HTTPError(
            400,
            "Room names are 1 to 64 characters: lower-case letters, digits and '-', "
            "starting with a letter or digit.",
        )
    return raw


class ChatAPI:
    """What the chat resources share: the store, the hub, the app and the session signer."""

    def __init__(
        self,
        apps: Apps,
        store: IStore,
        hub: IHub,
        sessions: SessionSigner,
        now: Callable[[], float],
        storeReady: Callable[[], bool],
        activityTimeout: int = 120,
        messagesPerMinute: int = 60,
    ) -> None:
        self.apps = apps
        self.store = store
        self.hub = hub
        self.sessions = sessions
        self.now = now
        self.storeReady = storeReady
        self.activityTimeout = activityTimeout
        self.messagesPerMinute = messagesPerMinute
        self.messageLimit = RateLimiter(
            messagesPerMinute / 60.0, min(MESSAGE_BURST, messagesPerMinute), now
        )

    def session(self, request: Request) -> Session | None:
        value = request.getCookie(COOKIE_NAME)
        if not value:
            return None
        try:
            return self.sessions.verify(value.decode("ascii"))
        except UnicodeDecodeError:
            return None

    def requireCookie(self, request: Request, status: int = 401) -> Session:
        """
        The session of the request's cookie, not yet checked against sign-outs (see
        L{requireSession}). Raises L{HTTPError} C{status} without a valid cookie.
        """
        session = self.session(request)
        if session is None:
            raise HTTPError(status, "Sign in first: POST /api/session with your name.")
        return session

    async def requireNotRevoked(self, session: Session) -> None:
        """Fails with L{HTTPError}: 401 when C{session} was signed out (on any process), 503
        when the store cannot say."""
        store = self.requireStore()
        if await store.sessionRevoked(session.sessionId).addErrback(_storeErrors):
            raise HTTPError(401, "This session was signed out: sign in again.")

    async def requireSession(self, request: Request, status: int = 401) -> Session:
        """
        The request's session, unless it was signed out. Fails with L{HTTPError}: C{status}
        without a valid cookie, 401 for a revoked session, 503 when the store cannot say.
        """
        session = self.requireCookie(request, status)
        await self.requireNotRevoked(session)
        return session

    def takeMessageToken(self, session: Session) -> None:
        """
        Count one message of C{session} against its rate limit.

        @raise HTTPError: 429 with C{Retry-After} when the session is over it.
        """
        wait = self.messageLimit.take(session.sessionId)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise HTTPError(
                429,
                f"Too many messages: at most {self.messagesPerMinute} a minute; "
                f"try again in {seconds} s.",
                headers={"Retry-After": str(seconds)},
            )

    async def announce(self, channel: str, event: str, payload: dict[str, Any]) -> None:
        """Publish C{payload} on C{channel}. A failure is logged, not raised: what is announced
        is durable already, and pages that reconnect fetch it."""
        try:
            await self.hub.publish(self.apps.default, [channel], event, json.dumps(payload))
        except Exception as e:
            log.warn(
                "{event} on {channel} stored but not announced: {e}",
                event=event,
                channel=channel,
                e=e,
            )

    def requireStore(self) -> IStore:
        if not self.storeReady():
            raise HTTPError(503, "The message store is not available yet; try again shortly.")
        return self.store

    def checkOrigin(self, request: Request) -> None:
        """Refuse cross-site writes: an C{Origin}, when sent, must be this server's (its host as
        the browser asked for it: behind a trusted proxy, the forwarded one)."""
        origin = request.getHeader(b"origin")
        if origin is None:
            return
        host = clientOf(request).host
        parts = urlsplit(origin.decode("latin-1"))
        if host is None or parts.netloc.lower() != host.lower():
            raise HTTPError(403, "Cross-site requests are not allowed.")


def _storeErrors(f: Any) -> Any:
    f.trap(StoreUnavailable)
    raise HTTPError(503, "The message store is unavailable; try again shortly.")


class ConfigResource(JSONResource):
    def __init__(self, chat: ChatAPI) -> None:
        super().__init__()
        self.chat = chat

    def handle_GET(self, request: Request) -> tuple[int, Any]:
        key = self.chat.apps.default.key
        return 200, {
            "app_key": key,
            "ws_path": f"/app/{key}",
            "activity_timeout": self.chat.activityTimeout,
        }


class SessionResource(JSONResource):
    def __init__(self, chat: ChatAPI) -> None:
        super().__init__()
        self.chat = chat

    async def handle_GET(self, request: Request) -> tuple[int, Any]:
        """200 either way, so a first visit logs no error: signed_in says which."""
        session = self.chat.session(request)
        if session is None:
            return 200, {"signed_in": False}
        try:
            await self.chat.requireNotRevoked(session)
        except HTTPError as e:
            if e.status != 401:
                raise
            return 200, {"signed_in": False}
        return 200, {"signed_in": True, "user_id": session.userId, "name": session.name}

    def handle_POST(self, request: Request) -> tuple[int, Any]:
        self.chat.checkOrigin(request)
        requireJSONContentType(request)
        body = parseJSONObject(readBody(request, 4096))
        name = validName(body.get("name"))
        # A new name for the same person (a signed sign-in) stays the same user.
        current = self.chat.session(request)
        value, session = self.chat.sessions.issue(name, current.userId if current else None)
        cookie = (
            f"{COOKIE_NAME.decode()}={value}; Path=/; Max-Age={MAX_AGE}; HttpOnly; SameSite=Lax"
        )
        if clientOf(request).scheme == "https":  # behind a trusted TLS proxy too
            cookie += "; Secure"
        request.responseHeaders.addRawHeader(b"set-cookie", cookie.encode("ascii"))
        return 200, {"signed_in": True, "user_id": session.userId, "name": session.name}

    async def handle_DELETE(self, request: Request) -> tuple[int, Any]:
        """Sign out: the session is revoked in the store (so on every process), then the
        cookie is cleared."""
        self.chat.checkOrigin(request)
        session = await self.chat.requireSession(request)
        store = self.chat.requireStore()
        await store.revokeSession(session.sessionId, session.expires, self.chat.now()).addErrback(
            _storeErrors
        )
        self.chat.messageLimit.forget(session.sessionId)
        cookie = f"{COOKIE_NAME.decode()}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"
        if clientOf(request).scheme == "https":  # behind a trusted TLS proxy too
            cookie += "; Secure"
        request.responseHeaders.addRawHeader(b"set-cookie", cookie.encode("ascii"))
        return 200, {"signed_out": True}


class RoomsResource(Resource):
    """C{/api/rooms} and, below it, C{/api/rooms/{room}/messages}."""

    def __init__(self, chat: ChatAPI) -> None:
        super().__init__()
        self.chat = chat
        self.listing = RoomListResource(chat)

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            return self.listing
        return RoomResource(self.chat, path.decode("utf-8", "replace"))

    def render(self, request: Request) -> Any:
        return self.listing.render(request)


class RoomListResource(JSONResource):
    def __init__(self, chat: ChatAPI) -> None:
        super().__init__()
        self.chat = chat

    async def handle_GET(self, request: Request) -> tuple[int, Any]:
        store = self.chat.requireStore()
        rooms = await store.rooms(100).addErrback(_storeErrors)
        return 200, {"rooms": [r.toJSON() for r in rooms]}

    async def handle_POST(self, request: Request) -> tuple[int, Any]:
        """Create a room; a new one is told on the lobby so other pages list it at once."""
        self.chat.checkOrigin(request)
        requireJSONContentType(request)
        session = self.chat.requireCookie(request)
        body = parseJSONObject(readBody(request, 4096))
        raw = body.get("name")
        room = validRoom(raw if isinstance(raw, str) else "")
        store = self.chat.requireStore()
        self.chat.takeMessageToken(session)  # creating rooms costs like posting
        await self.chat.requireNotRevoked(session)
        created = await store.createRoom(room, self.chat.now()).addErrback(_storeErrors)
        if created:
            await self.chat.announce(LOBBY_CHANNEL, "room-created", {"name": room})
        return (201 if created else 200), {"name": room, "created": created}


class RoomResource(Resource):
    def __init__(self, chat: ChatAPI, room: str) -> None:
        super().__init__()
        self.chat = chat
        self.room = room

    def getChild(self, path: bytes, request: Request) -> Resource:
        rest = request.postpath or []
        if path == b"messages" and not rest:
            return MessagesResource(self.chat, self.room)
        if path == b"messages" and len(rest) == 1:
            return MessageResource(self.chat, self.room, rest[0])
        return NotFound()


class NotFound(JSONResource):
    def render(self, request: Request) -> bytes | int:
        return errorBody(request, HTTPError(404, "There is nothing at this address."))


class MessagesResource(JSONResource):
    def __init__(self, chat: ChatAPI, room: str) -> None:
        super().__init__()
        self.chat = chat
        self.room = room

    async def handle_GET(self, request: Request) -> tuple[int, Any]:
        room = validRoom(self.room)
        limit = intArg(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        after = queryArg(request, "after") or None
        before = queryArg(request, "before") or None
        if after is not None and before is not None:
            raise HTTPError(400, "Give after or before, not both.")
        store = self.chat.requireStore()
        if after is not None:
            d = store.messages(room, intArg(request, "after", 0, 0, 2**62), limit)
        elif before is not None:
            d = store.before(room, intArg(request, "before", 1, 1, 2**62), limit)
        else:
            d = store.latest(room, limit)
        messages = await d.addErrback(_storeErrors)
        return 200, {"messages": [m.toJSON() for m in messages]}

    async def handle_POST(self, request: Request) -> tuple[int, Any]:
        room = validRoom(self.room)
        self.chat.checkOrigin(request)
        requireJSONContentType(request)
        session = self.chat.requireCookie(request)
        body = parseJSONObject(readBody(request))
        text = validText(body.get("text"))
        clientId = validClientId(body.get("client_id"))
        store = self.chat.requireStore()
        # The rate first: a flood over it costs a dict look-up, not a store query each.
        self.chat.takeMessageToken(session)
        await self.chat.requireNotRevoked(session)
        message = await store.append(
            room, session.name, text, self.chat.now(), session.userId, clientId
        ).addErrback(_storeErrors)
        payload = message.toJSON()
        if message.replayed:
            # A retry of a post that was stored (and announced) already: the first answer again.
            return 200, payload
        await self.chat.announce(roomChannel(room), "message", payload)
        await self.chat.announce(
            LOBBY_CHANNEL, "room-activity", {"name": room, "last_id": message.id}
        )
        return 201, payload


class MessageResource(JSONResource):
    """C{/api/rooms/{room}/messages/{id}}: the author edits (PATCH) or deletes (DELETE) it."""

    def __init__(self, chat: ChatAPI, room: str, messageId: bytes) -> None:
        super().__init__()
        self.chat = chat
        self.room = room
        self.messageId = messageId

    async def _change(self, request: Request, text: str | None) -> tuple[int, Any]:
        room = validRoom(self.room)
        if not self.messageId.isdigit() or len(self.messageId) > 18:
            raise HTTPError(404, "There is no such message.")
        session = self.chat.requireCookie(request)
        store = self.chat.requireStore()
        self.chat.takeMessageToken(session)
        await self.chat.requireNotRevoked(session)
        message: Message | None = await store.edit(
            room, int(self.messageId), session.userId, text, self.chat.now()
        ).addErrback(_storeErrors)
        if message is None or message.deleted and text is not None:
            raise HTTPError(404, "There is no such message (or it was deleted).")
        if message.userId != session.userId:
            raise HTTPError(403, "Only the author may change a message.")
        payload = message.toJSON()
        await self.chat.announce(roomChannel(room), "message-updated", payload)
        return 200, payload

    async def handle_PATCH(self, request: Request) -> tuple[int, Any]:
        self.chat.checkOrigin(request)
        requireJSONContentType(request)
        text = validText(parseJSONObject(readBody(request)).get("text"))
        return await self._change(request, text)

    async def handle_DELETE(self, request: Request) -> tuple[int, Any]:
        self.chat.checkOrigin(request)
        return await self._change(request, None)


class PusherAuthResource(JSONResource):
    """Signs the page's private-/presence- subscriptions for the signed-in user."""

    def __init__(self, chat: ChatAPI) -> None:
        super().__init__()
        self.chat = chat

    async def handle_POST(self, request: Request) -> tuple[int, Any]:
        self.chat.checkOrigin(request)
        session = await self.chat.requireSession(request, status=403)
        args = formArgs(request, 4096)
        socketId = queryArg(request, "socket_id", args) or ""
        channel = queryArg(request, "channel_name", args) or ""
        if not isSocketId(socketId):
            raise HTTPError(400, "socket_id is missing or malformed.")
        if not isChannel(channel):
            raise HTTPError(400, "channel_name is missing or malformed.")
        # A chat session is just a name: it may join the chat's room channels and nothing else,
        # so the app's other private and presence channels stay closed to chat visitors.
        if channel == LOBBY_CHANNEL:
            return 200, {"auth": channelAuth(self.chat.apps.default, socketId, channel)}
        prefix = roomChannel("")
        if not (channel.startswith(prefix) and isRoom(channel[len(prefix) :])):
            raise HTTPError(
                403,
                f"The chat signs its room channels (presence-room-NAME) and {LOBBY_CHANNEL} only.",
            )
        channelData = json.dumps({"user_id": session.userId, "user_info": {"name": session.name}})
        return 200, {
            "auth": channelAuth(self.chat.apps.default, socketId, channel, channelData),
            "channel_data": channelData,
        }


class APIRoot(Resource):
    """A folder of the API: itself and anything unknown below it are a JSON 404."""

    def getChild(self, path: bytes, request: Request) -> Resource:
        return NotFound()

    def render(self, request: Request) -> bytes:
        return errorBody(request, HTTPError(404, "There is nothing at this address."))


def makeChatResource(chat: ChatAPI) -> Resource:
    api = APIRoot()
    api.putChild(b"config", ConfigResource(chat))
    api.putChild(b"session", SessionResource(chat))
    api.putChild(b"rooms", RoomsResource(chat))
    pusher = APIRoot()
    pusher.putChild(b"auth", PusherAuthResource(chat))
    api.putChild(b"pusher", pusher)
    return api
