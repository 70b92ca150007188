"""
The chat app's REST API, mounted at C{/api}:

    GET  /api/config                      app key and WebSocket path for the page
    GET  /api/session                     who am I (401 without a session, or a revoked one)
    POST /api/session {"name"}            sign in: sets the signed session cookie
    DELETE /api/session                   sign out: revokes the session everywhere
    GET  /api/rooms                       recently active rooms
    GET  /api/rooms/{room}/messages       ?after=ID&limit=N, oldest first
    POST /api/rooms/{room}/messages       {"text"}: stored durably, then published; 429 with
                                          Retry-After above the session's message rate
    POST /api/pusher/auth                 signs private-/presence- subscriptions for the page

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
from pushsvc.store import IStore, StoreUnavailable

log = Logger()

MAX_NAME = 40  # visible characters (combining marks ride on the one before them)
MAX_NAME_CODEPOINTS = 3 * MAX_NAME
MESSAGE_BURST = 20  # messages a session may post at once before its per-minute rate applies
MAX_TEXT = 2000
DEFAULT_LIMIT = 50
MAX_LIMIT = 200


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
        session = await self.chat.requireSession(request)
        return 200, {"user_id": session.userId, "name": session.name}

    def handle_POST(self, request: Request) -> tuple[int, Any]:
        self.chat.checkOrigin(request)
        requireJSONContentType(request)
        body = parseJSONObject(readBody(request, 4096))
        name = validName(body.get("name"))
        value, session = self.chat.sessions.issue(name)
        cookie = (
            f"{COOKIE_NAME.decode()}={value}; Path=/; Max-Age={MAX_AGE}; HttpOnly; SameSite=Lax"
        )
        if clientOf(request).scheme == "https":  # behind a trusted TLS proxy too
            cookie += "; Secure"
        request.responseHeaders.addRawHeader(b"set-cookie", cookie.encode("ascii"))
        return 200, {"user_id": session.userId, "name": session.name}

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


class RoomResource(Resource):
    def __init__(self, chat: ChatAPI, room: str) -> None:
        super().__init__()
        self.chat = chat
        self.room = room

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"messages" and not request.postpath:
            return MessagesResource(self.chat, self.room)
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
        after = queryArg(request, "after")
        store = self.chat.requireStore()
        if after is None or after == "":
            d = store.latest(room, limit)
        else:
            d = store.messages(room, intArg(request, "after", 0, 0, 2**62), limit)
        messages = await d.addErrback(_storeErrors)
        return 200, {"messages": [m.toJSON() for m in messages]}

    async def handle_POST(self, request: Request) -> tuple[int, Any]:
        room = validRoom(self.room)
        self.chat.checkOrigin(request)
        requireJSONContentType(request)
        session = self.chat.requireCookie(request)
        body = parseJSONObject(readBody(request))
        text = validText(body.get("text"))
        store = self.chat.requireStore()
        # The rate first: a flood over it costs a dict look-up, not a store query each.
        self.chat.takeMessageToken(session)
        await self.chat.requireNotRevoked(session)
        message = await store.append(room, session.name, text, self.chat.now()).addErrback(
            _storeErrors
        )
        payload = message.toJSON()
        try:
            await self.chat.hub.publish(
                self.chat.apps.default, [roomChannel(room)], "message", json.dumps(payload)
            )
        except Exception as e:
            # The message is durable: pages that reconnect fetch it. Tell, don't fail the post.
            log.warn(
                "message {id} in {room} stored but not announced: {e}",
                id=message.id,
                room=room,
                e=e,
            )
        return 201, payload


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
        prefix = roomChannel("")
        if not (channel.startswith(prefix) and isRoom(channel[len(prefix) :])):
            raise HTTPError(403, "The chat signs its room channels (presence-room-NAME) only.")
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
