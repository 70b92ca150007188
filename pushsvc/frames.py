# The wire protocol of /app/{key}: Pusher Channels protocol v7 over WebSocket text frames.
#
# Connecting: ws://HOST/app/{key}?protocol=7&client=js&version=8.6.0. A refused connection gets
# the WebSocket handshake, then {"event":"pusher:error","data":{"code":N,"message":"..."}} and a
# close with the same code N:
#   4001 unknown app key      4003 app disabled        4005 path is not /app/{key}
#   4004 over the app's max_connections (apps file)
#   4006 protocol is not an integer   4007 protocol outside 5..7   4008 no protocol given
#   4100 this node cannot deliver events now (its Redis link is down): back off, try again
# A browser Origin not in --allowed-origins is refused in the HTTP handshake itself (403).
#
# Every frame is one UTF-8 JSON object {"event": E, "channel": C?, "data": D?}. From the server,
# D of pusher:* and pusher_internal:* events is a JSON *string*, except pusher:error (an object).
# From the client, D may be an object (pusher-js) or a JSON string.
#
# Server -> client
#   pusher:connection_established  {"socket_id":"A.B","activity_timeout":120}
#   pusher:pong                    {}                           (answer to pusher:ping)
#   pusher_internal:subscription_succeeded  C  "{}" or {"presence":{"ids","hash","count"}}
#   pusher:subscription_error      C  {"type":"AuthError"|"LimitReached","error":..,"status":N}
#                                  (401 bad signature or channel_data, 403 limit or user channel;
#                                  limits: subscriptions per connection, presence members, channel
#                                  name length, per app)
#   pusher_internal:member_added   C  {"user_id":..,"user_info":..}  (a user's first connection)
#   pusher_internal:member_removed C  {"user_id":..}                 (a user's last connection)
#   pusher:cache_miss              C                  (subscribe to an empty cache-* channel)
#   pusher:signin_success          {"user_data":"<json string>"}
#   E (app events)                 C  D (a string), "user_id" added to client events on presence
#   pusher:error                   {"code":N,"message":".."} with N:
#     4002 malformed frame: binary, not JSON, JSON nested deeper than 32 levels (the frame, or
#          the JSON string in data, channel_data or user_data), not an object, missing/non-string
#          event, event name with control characters, data or channel of the wrong type, bad
#          channel name or user id (pushsvc.names), unknown event. The connection stays open.
#     4009 not allowed: bad sign-in signature, client event on a channel that does not take
#          them or that this socket has not subscribed.
#     4301 client event over the per-connection rate limit (the event is dropped).
#
# Client -> server
#   pusher:ping; pusher:subscribe {"channel","auth"?,"channel_data"?}; pusher:unsubscribe
#   {"channel"}; pusher:signin {"auth","user_data"}; client-* events {"event","channel","data"}.
#
# Close codes from the server:
#   1007 text frame that is not UTF-8 (RFC 6455, Autobahn)   1009 frame over maxFrameBytes
#   4009 connections of a user terminated through the HTTP API, or not signed in within the
#        app's user_authentication_timeout (apps file)
#   4001 / 4003 the app was removed / disabled by a reload of the apps file (pusher:error first)
#   4100 slow consumer: unsent output passed maxOutboundBytes (client reconnects after back-off)
#   4200 server shutting down, or its Redis link was lost and events may have been missed
#        (reconnect at once, refetch what was missed)   4201 no answer to a WebSocket ping
#
# This module is pure: no I/O, no Twisted, so it can be fuzzed.

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pushsvc import names
from pushsvc.jsondecode import JSONInputError, decodeJSON

ERR_MALFORMED = 4002
ERR_NOT_ALLOWED = 4009
ERR_RATE_LIMIT = 4301

CLOSE_UNKNOWN_KEY = 4001
CLOSE_APP_DISABLED = 4003
CLOSE_OVER_QUOTA = 4004  # over the app's max_connections
CLOSE_BAD_PATH = 4005
CLOSE_BAD_VERSION = 4006
CLOSE_UNSUPPORTED_VERSION = 4007
CLOSE_NO_VERSION = 4008
CLOSE_TERMINATED = 4009
CLOSE_UNAUTHENTICATED = 4009  # not signed in within the app's user_authentication_timeout
CLOSE_SLOW_CONSUMER = 4100
CLOSE_OVER_CAPACITY = 4100  # refused at open while this node cannot deliver (broker unhealthy)
CLOSE_SHUTDOWN = 4200
CLOSE_NO_PONG = 4201

SUPPORTED_PROTOCOLS = range(5, 8)
MAX_CHANNEL_LENGTH = names.MAX_NAME
SERVER_TO_USER_PREFIX = names.SERVER_TO_USER_PREFIX

_CACHE_PREFIXES = ("cache-", "private-cache-", "presence-cache-", "private-encrypted-cache-")
_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class ProtocolError(Exception):
    """A client frame breaks the protocol; answer with C{pusher:error} C{code}."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class ClientFrame:
    """One parsed client frame: C{data} is a decoded JSON value (a string stays a string)."""

    event: str
    channel: str | None
    data: Any


# -- channel names -----------------------------------------------------------------------------


def isValidChannelName(name: object) -> bool:
    """Whether C{name} is a channel a client may name (the reserved C{#server-to-user-} is not)."""
    return names.isChannel(name)


def isServerToUser(name: str) -> bool:
    return name.startswith(SERVER_TO_USER_PREFIX)


def serverToUserChannel(userId: str) -> str:
    return SERVER_TO_USER_PREFIX + userId


WATCHLIST_PREFIX = "#watchlist-"
WATCHLIST_EVENT = "pusher_internal:watchlist_events"
MAX_WATCHLIST = 100  # user ids one sign-in may watch, as Pusher allows


def watchlistChannel(userId: str) -> str:
    """The reserved channel a connection watching C{userId} is subscribed to."""
    return WATCHLIST_PREFIX + userId


def watchlistEventsData(name: str, userIds: list[str]) -> str:
    """Pusher's watchlist data: C{{"events": [{"name": "online", "user_ids": [...]}]}}."""
    return _compact({"events": [{"name": name, "user_ids": userIds}]})


def watchlistOf(userData: str) -> list[str]:
    """The user ids of C{watchlist} in sign-in C{user_data} (strings only, at most 100)."""
    try:
        obj = json.loads(userData)
    except ValueError:
        return []
    raw = obj.get("watchlist") if isinstance(obj, dict) else None
    if not isinstance(raw, list):
        return []
    ids = [u for u in raw if isinstance(u, str) and 0 < len(u) <= 200]
    return list(dict.fromkeys(ids))[:MAX_WATCHLIST]


def channelKind(name: str) -> str:
    """
    One of C{"public"}, C{"private"}, C{"private-encrypted"}, C{"presence"} or C{"user"} (the
    reserved C{#server-to-user-} channels). The C{cache-} variants are told by L{isCacheChannel}.
    """
    if name.startswith("private-encrypted-"):
        return "private-encrypted"
    if name.startswith("private-"):
        return "private"
    if name.startswith("presence-"):
        return "presence"
    if name.startswith(SERVER_TO_USER_PREFIX):
        return "user"
    return "public"


def isCacheChannel(name: str) -> bool:
    return name.startswith(_CACHE_PREFIXES)


def needsAuth(name: str) -> bool:
    return channelKind(name) in ("private", "private-encrypted", "presence")


def takesClientEvents(name: str) -> bool:
    """Client events go only on private and presence channels, never on encrypted ones."""
    return channelKind(name) in ("private", "presence")


# -- client frames -----------------------------------------------------------------------------


def _malformed(message: str) -> ProtocolError:
    return ProtocolError(ERR_MALFORMED, message)


def parseClientFrame(payload: bytes, isBinary: bool, maxBytes: int) -> ClientFrame:
    """
    Parse one WebSocket message from a client.

    @raise ProtocolError: for anything that is not a well-formed Pusher frame.
    """
    if isBinary:
        raise _malformed("binary frames are not supported")
    obj = _jsonObject(payload, "frame", maxBytes)
    event = obj.get("event")
    if not isinstance(event, str) or not event:
        raise _malformed("frame has no event name")
    if not names.isEventName(event):
        raise _malformed("event name is too long or holds control characters")
    channel = obj.get("channel")
    if channel is not None and not isValidChannelName(channel):
        raise _malformed("invalid channel name")
    data = obj.get("data")
    if isinstance(data, str) and event.startswith("pusher:"):
        # pusher:* data may come as a JSON string; client events keep their data as sent.
        data = _json(data, "data")
    return ClientFrame(event, channel, data)


def _json(data: bytes | str, what: str, maxBytes: int | None = None) -> Any:
    """
    C{data} through the one JSON decoder (size, UTF-8, depth, syntax).

    @raise ProtocolError: naming C{what} and what is wrong.
    """
    try:
        return decodeJSON(data, maxBytes)
    except JSONInputError as e:
        raise _malformed(f"{what} {e.reason}") from None


def _jsonObject(data: bytes | str, what: str, maxBytes: int | None = None) -> dict[str, Any]:
    """C{data} decoded as a JSON object. @raise ProtocolError: naming C{what} otherwise."""
    obj = _json(data, what, maxBytes)
    if not isinstance(obj, dict):
        raise _malformed(f"{what} must be a JSON object")
    return obj


def _dataObject(frame: ClientFrame) -> dict[str, Any]:
    if not isinstance(frame.data, dict):
        raise _malformed(f"{frame.event} data must be an object")
    return frame.data


@dataclass(frozen=True, slots=True)
class SubscribeRequest:
    channel: str
    auth: str | None
    channelData: str | None


def subscribeRequest(frame: ClientFrame) -> SubscribeRequest:
    """The fields of a C{pusher:subscribe}. @raise ProtocolError: when they are malformed."""
    data = _dataObject(frame)
    channel = data.get("channel")
    if not names.isChannel(channel, allowUser=True):
        raise _malformed("invalid channel name")
    assert isinstance(channel, str)
    auth = data.get("auth")
    if auth is not None and not isinstance(auth, str):
        raise _malformed("auth must be a string")
    channelData = data.get("channel_data")
    if channelData is not None and not isinstance(channelData, str):
        raise _malformed("channel_data must be a JSON string")
    return SubscribeRequest(channel, auth or None, channelData)


def unsubscribeChannel(frame: ClientFrame) -> str:
    """The channel of a C{pusher:unsubscribe}. @raise ProtocolError: when it is malformed."""
    channel = _dataObject(frame).get("channel")
    if not names.isChannel(channel, allowUser=True):
        raise _malformed("invalid channel name")
    assert isinstance(channel, str)
    return channel


@dataclass(frozen=True, slots=True)
class Member:
    """A presence member: the user id (always a string) and the app's info about the user."""

    userId: str
    userInfo: Any


def presenceMember(channelData: str) -> Member:
    """
    The member a presence C{channel_data} string names.

    @raise ProtocolError: unless it is a JSON object with a string or number C{user_id}.
    """
    obj = _jsonObject(channelData, "channel_data")
    userId = obj.get("user_id")
    if isinstance(userId, bool) or not isinstance(userId, (str, int, float)):
        raise _malformed("channel_data needs a string or number user_id")
    userId = userId if isinstance(userId, str) else json.dumps(userId)
    if not names.isUserId(userId):
        raise _malformed("user_id must be 1 to 200 letters, digits and -_=@,.; characters")
    return Member(userId, obj.get("user_info"))


@dataclass(frozen=True, slots=True)
class SigninRequest:
    auth: str
    userData: str
    userId: str
    userInfo: Any


def signinRequest(frame: ClientFrame) -> SigninRequest:
    """The fields of a C{pusher:signin}. @raise ProtocolError: when they are malformed."""
    data = _dataObject(frame)
    auth, userData = data.get("auth"), data.get("user_data")
    if not isinstance(auth, str) or not isinstance(userData, str):
        raise _malformed("pusher:signin needs string auth and user_data")
    user = _jsonObject(userData, "user_data")
    userId = user.get("id")
    if not isinstance(userId, str) or not names.isUserId(userId):
        raise _malformed("user_data needs an id of 1 to 200 letters, digits and -_=@,.; characters")
    return SigninRequest(auth, userData, userId, user.get("user_info"))


def clientEventData(frame: ClientFrame) -> str:
    """
    The data of a C{client-} event as the string to relay.

    @raise ProtocolError: when the event has no channel.
    """
    if frame.channel is None:
        raise _malformed("client events need a channel")
    data = frame.data
    return data if isinstance(data, str) else _compact(data)


# -- server frames -----------------------------------------------------------------------------


def encodeEvent(
    event: str, channel: str | None, data: str | None, userId: str | None = None
) -> bytes:
    """One server frame, compact UTF-8 JSON; C{data} is a string (already JSON for pusher:*)."""
    frame: dict[str, Any] = {"event": event}
    if channel is not None:
        frame["channel"] = channel
    if data is not None:
        frame["data"] = data
    if userId is not None:
        frame["user_id"] = userId
    return _compact(frame).encode("utf-8")


def _internal(event: str, channel: str | None, data: Any) -> bytes:
    return encodeEvent(event, channel, _compact(data))


def connectionEstablished(socketId: str, activityTimeout: int) -> bytes:
    return _internal(
        "pusher:connection_established",
        None,
        {"socket_id": socketId, "activity_timeout": activityTimeout},
    )


def error(code: int, message: str) -> bytes:
    """C{pusher:error}; its data is an object, not a string."""
    return _compact({"event": "pusher:error", "data": {"code": code, "message": message}}).encode()


PONG = _internal("pusher:pong", None, {})


def subscriptionSucceeded(channel: str, presence: dict[str, Any] | None = None) -> bytes:
    return _internal(
        "pusher_internal:subscription_succeeded",
        channel,
        {} if presence is None else {"presence": presence},
    )


def presenceData(members: dict[str, Any]) -> dict[str, Any]:
    """The C{presence} object of a subscription_succeeded from user id -> user info."""
    return {"ids": list(members), "hash": dict(members), "count": len(members)}


def subscriptionError(channel: str, type: str, error: str, status: int) -> bytes:
    frame = {
        "event": "pusher:subscription_error",
        "channel": channel,
        "data": {"type": type, "error": error, "status": status},
    }
    return _compact(frame).encode("utf-8")


def memberAddedData(userId: str, userInfo: Any) -> str:
    return _compact({"user_id": userId, "user_info": userInfo})


def memberRemovedData(userId: str) -> str:
    return _compact({"user_id": userId})


def cacheMiss(channel: str) -> bytes:
    return encodeEvent("pusher:cache_miss", channel, "{}")


def signinSuccess(userData: str) -> bytes:
    return _internal("pusher:signin_success", None, {"user_data": userData})


def compactJSON(value: Any) -> str:
    return _compact(value)


# -- WebSocket framing -------------------------------------------------------------------------


def wsTextFrame(payload: bytes) -> bytes:
    """
    A whole unmasked, unfragmented WebSocket text frame (RFC 6455 5.2) carrying C{payload}: what
    a server writes, so one publish is framed once and the same bytes go to every subscriber.
    """
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload
