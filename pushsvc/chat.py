"""
The chat app's REST API, mounted at C{/api}:

    GET  /api/config                      app key and WebSocket path for the page
    GET  /api/session                     who am I (401 without a session)
    POST /api/session {"name"}            sign in: sets the signed session cookie
    GET  /api/rooms                       recently active rooms
    GET  /api/rooms/{room}/messages       ?after=ID&limit=N, oldest first
    POST /api/rooms/{room}/messages       {"text"}: stored durably, then published
    POST /api/pusher/auth                 signs private-/presence- subscriptions for the page

Every reply is JSON; every error is C{{"error": "<sentence>"}}.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from pushsvc.apps import Apps
from pushsvc.httputil import (
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
from pushsvc.session import COOKIE_NAME, MAX_AGE, Session, SessionSigner
from pushsvc.signing import channelAuth
from pushsvc.store import IStore, StoreUnavailable

log = Logger()

MAX_NAME = 32
MAX_TEXT = 2000
DEFAULT_LIMIT = 50
MAX_LIMIT = 200


def roomChannel(room: str) -> str:
    """The presence channel on which a room's messages are published."""
    return f"presence-room-{room}"


def _hasControl(text: str, allowed: str = "") -> bool:
    """Control characters, and lone surrogates (which no engine can store), are refused."""
    return any(unicodedata.category(c) in ("Cc", "Cs") and c not in allowed for c in text)


def validName(raw: object) -> str:
    if not isinstance(raw, str):
        raise HTTPError(400, "The name must be a string.")
    name = raw.strip()
    if not 1 <= len(name) <= MAX_NAME:
        raise HTTPError(400, f"The name must be 1 to {MAX_NAME} characters long.")
    if _hasControl(name):
        raise HTTPError(400, "The name must not contain control characters.")
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
    ) -> None:
        self.apps = apps
        self.store = store
        self.hub = hub
        self.sessions = sessions
        self.now = now
        self.storeReady = storeReady
        self.activityTimeout = activityTimeout

    def session(self, request: Request) -> Session | None:
        value = request.getCookie(COOKIE_NAME)
        if not value:
            return None
        try:
            return self.sessions.verify(value.decode("ascii"))
        except UnicodeDecodeError:
            return None

    def requireSession(self, request: Request, status: int = 401) -> Session:
        session = self.session(request)
        if session is None:
            raise HTTPError(status, "Sign in first: POST /api/session with your name.")
        return session

    def requireStore(self) -> IStore:
        if not self.storeReady():
            raise HTTPError(503, "The message store is not available yet; try again shortly.")
        return self.store

    def checkOrigin(self, request: Request) -> None:
        """Refuse cross-site writes: an C{Origin}, when sent, must be this server's."""
        origin = request.getHeader(b"origin")
        if origin is None:
            return
        host = request.getHeader(b"host")
        parts = urlsplit(origin.decode("latin-1"))
        if host is None or parts.netloc.encode("latin-1").lower() != host.lower():
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

    def handle_GET(self, request: Request) -> tuple[int, Any]:
        session = self.chat.requireSession(request)
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
        if request.isSecure():
            cookie += "; Secure"
        request.responseHeaders.addRawHeader(b"set-cookie", cookie.encode("ascii"))
        return 200, {"user_id": session.userId, "name": session.name}


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
        session = self.chat.requireSession(request)
        body = parseJSONObject(readBody(request))
        text = validText(body.get("text"))
        store = self.chat.requireStore()
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

    def handle_POST(self, request: Request) -> tuple[int, Any]:
        self.chat.checkOrigin(request)
        session = self.chat.requireSession(request, status=403)
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
