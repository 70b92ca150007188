"""
The Pusher-compatible HTTP API that server SDKs call, mounted at C{/apps}:

    POST /apps/{id}/events           {name, data, channel | channels, socket_id?, info?}
    POST /apps/{id}/batch_events     {batch: [{channel, name, data, socket_id?, info?}]} (1..10)
    GET  /apps/{id}/channels?filter_by_prefix=P&info=user_count    occupied channels
    GET  /apps/{id}/channels/{name}?info=user_count,subscription_count
    GET  /apps/{id}/channels/{name}/users                          presence channels only
    POST /apps/{id}/users/{user_id}/terminate_connections

Every request is signed (L{pushsvc.apiauth}); an app's C{max_api_requests_per_second} (apps file)
is checked after the signature: 429 above it. The checks run in this order, each failure answering
C{{"error": "..."}}: unknown app or endpoint 404, wrong method 405, body too large 413, a query
parameter given twice (names compared without case) or not one the endpoint takes (the auth ones,
C{body_md5}, and those shown above) 400, signature 401, app disabled 403, malformed body (JSON
nested deeper than 32 levels included) or parameters 400, C{data} too large 413, broker down 503.
Names (channels, user ids, socket ids, event names) are checked by L{pushsvc.names}.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import parse_qs, parse_qsl, unquote_to_bytes

from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from pushsvc import names
from pushsvc.apiauth import ApiAuthError, checkParameterNames, verifyApiRequest
from pushsvc.apps import App, Apps
from pushsvc.appstats import AppStats
from pushsvc.frames import isCacheChannel
from pushsvc.http import util
from pushsvc.http.util import DEFAULT_MAX_BODY, HTTPError, parseJSONObject, readBody, respond
from pushsvc.interfaces import BrokerUnavailable, ChannelInfo, IHub

log = Logger()

MAX_NAME = names.MAX_NAME
MAX_CHANNELS = 100
MAX_BATCH = 10
MAX_BODY = DEFAULT_MAX_BODY
MAX_BATCH_BODY = 10 * DEFAULT_MAX_BODY
SERVER_TO_USER = names.SERVER_TO_USER_PREFIX
INFO_ATTRIBUTES = ("subscription_count", "user_count")

Reply = tuple[int, Any]
# How the fast path answers: (status, JSON object, extra headers, chunked), then it is sent;
# chunked as twisted.web sends a reply written after render returned (http.util.respond).
Answer = Callable[[int, Any, Mapping[str, str], bool], None]


# Validation: pure, raises HTTPError.


def validChannel(name: object, allowUser: bool = True) -> str:
    """C{name} if it is a valid channel name (C{#server-to-user-{id}} too when C{allowUser})."""
    if not isinstance(name, str):
        raise HTTPError(400, "A channel name must be a string.")
    if not names.isChannel(name, allowUser):
        raise HTTPError(
            400,
            f"The channel name {name!r} must be 1 to {MAX_NAME} letters, digits and -_=@,.; "
            "characters.",
        )
    return name


def validUserId(userId: str) -> str:
    if not names.isUserId(userId):
        raise HTTPError(
            400, f"A user id is 1 to {MAX_NAME} letters, digits and -_=@,.; characters."
        )
    return userId


def parseInfo(raw: object, known: tuple[str, ...] = INFO_ATTRIBUTES) -> frozenset[str]:
    """The attributes asked for by an C{info} parameter: a comma-separated list."""
    if raw is None:
        return frozenset()
    if not isinstance(raw, str):
        raise HTTPError(400, "info must be a comma-separated string of attributes.")
    asked = frozenset(a.strip() for a in raw.split(",") if a.strip())
    unknown = asked.difference(known)
    if unknown:
        raise HTTPError(
            400,
            f"Unknown info attribute(s) {', '.join(sorted(unknown))}: "
            f"the known ones are {', '.join(known)}.",
        )
    return asked


@dataclass(frozen=True)
class Event:
    """One event to publish, validated."""

    channels: list[str]
    name: str
    data: str
    socketId: str | None
    info: frozenset[str]


def parseEvent(obj: Mapping[str, Any], app: App, batchItem: bool = False) -> Event:
    """
    Validate one event of C{POST /events} (C{channel} or C{channels}) or of a batch (C{channel}).
    Unknown keys are ignored, as other SDKs may send more than ours knows.

    @raise HTTPError: 400 for a bad field (a channel name over C{app.maxChannelNameLength}
        included), 413 when C{data} is over C{app.maxDataBytes}.
    """
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise HTTPError(400, "name (the event name) must be a non-empty string.")
    if not names.isEventName(name):
        raise HTTPError(
            400, f"The event name must be 1 to {MAX_NAME} characters, none of them control ones."
        )
    if name.startswith(("pusher:", "pusher_internal:")):
        # Clients treat these as protocol events; an app publishing one would confuse them.
        raise HTTPError(400, "Event names starting with pusher: are reserved for the protocol.")
    data = obj.get("data")
    if not isinstance(data, str):
        raise HTTPError(400, "data must be a string (JSON-encode objects first).")
    if len(data.encode("utf-8")) > app.maxDataBytes:
        raise HTTPError(413, f"data is larger than {app.maxDataBytes} bytes.")
    if batchItem:
        if "channel" not in obj:
            raise HTTPError(400, "channel is missing.")
        channels = [validChannel(obj["channel"])]
    else:
        channels = _eventChannels(obj)
    if len(channels) > 1 and any(c.startswith("private-encrypted-") for c in channels):
        raise HTTPError(400, "An event on an encrypted channel can be sent to that channel only.")
    for channel in channels:
        if len(channel) > app.maxChannelNameLength:
            raise HTTPError(
                400, f"Channel names are at most {app.maxChannelNameLength} characters."
            )
    socketId = obj.get("socket_id")
    if socketId is not None and not names.isSocketId(socketId):
        raise HTTPError(400, "socket_id must look like 123.456.")
    return Event(channels, name, data, socketId, parseInfo(obj.get("info")))


def _eventChannels(obj: Mapping[str, Any]) -> list[str]:
    if ("channel" in obj) == ("channels" in obj):
        raise HTTPError(400, "Give either channel (a name) or channels (a list of names).")
    if "channel" in obj:
        return [validChannel(obj["channel"])]
    channels = obj["channels"]
    if not isinstance(channels, list) or not 0 < len(channels) <= MAX_CHANNELS:
        raise HTTPError(400, f"channels must be a list of 1 to {MAX_CHANNELS} channel names.")
    # A channel named twice would deliver the event twice to its subscribers.
    return list(dict.fromkeys(validChannel(c) for c in channels))


def attributes(info: ChannelInfo, asked: frozenset[str], channel: str) -> dict[str, int]:
    """The asked-for attributes of a channel; C{user_count} exists for presence channels only."""
    out: dict[str, int] = {}
    if "user_count" in asked and channel.startswith("presence-"):
        out["user_count"] = info.userCount or 0
    if "subscription_count" in asked:
        out["subscription_count"] = info.subscriptionCount
    return out


def queryParams(uri: bytes, allowed: Iterable[str] = ()) -> dict[str, str]:
    """
    The query parameters of C{uri}, one value each, percent-decoded. (Not C{request.args}:
    twisted.web merges form bodies into it, and those are not part of the signed query.)

    @param allowed: the endpoint's parameters besides the authentication ones.
    @raise HTTPError: 400 for a query that is not UTF-8, a name given twice (in any case) or one
        the endpoint does not take.
    """
    query = uri.partition(b"?")[2]
    try:
        pairs = parse_qsl(query.decode("utf-8"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise HTTPError(400, "The query string is not valid UTF-8.") from None
    try:
        checkParameterNames([key for key, _ in pairs], allowed)
    except ApiAuthError as e:
        raise HTTPError(e.status, e.message) from None
    return dict(pairs)


_PLAIN_QUERY = re.compile(rb"[A-Za-z0-9_.=&~-]*\Z")  # nothing to unescape


def _plainQuery(query: bytes) -> dict[str, str]:
    """L{queryParams} of a query with no escapes (L{_PLAIN_QUERY}), without its parsing."""
    pairs = [pair.partition("=") for pair in query.decode("ascii").split("&") if pair]
    try:
        checkParameterNames([name for name, _, _ in pairs])
    except ApiAuthError as e:
        raise HTTPError(e.status, e.message) from None
    return {name: value for name, _, value in pairs}


async def brokerCall(f: Callable[..., Any], *args: Any) -> Any:
    """C{f(*args)}'s result; a L{BrokerUnavailable} failure becomes a 503 (never a 2xx)."""
    try:
        return await maybeDeferred(f, *args)
    except BrokerUnavailable as e:
        raise HTTPError(503, f"The broker is unavailable, try again later: {e}") from None


# The resource.


@dataclass(frozen=True)
class Call:
    """A request that passed the checks every endpoint shares."""

    app: App
    args: list[str]  # the path segments matched by "*"
    params: dict[str, str]
    body: bytes


Handler = Callable[[Call], Coroutine[Any, Any, Reply]]


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~1 us more, per publish
class CheckedPublish:
    """A publish that passed every check of the full path: what L{PusherAPI.commitPublish} needs."""

    app: App
    target: bytes  # the request target as sent: path and query
    path: str  # as sent (no %-escapes: the fast path takes no other)
    params: dict[str, str]
    body: bytes
    events: list[Event]
    now: float


class PusherAPI(Resource):
    """Everything below C{/apps}; see the module docstring."""

    isLeaf = True

    def __init__(self, apps: Apps, hub: IHub, now: Callable[[], float]) -> None:
        super().__init__()
        self.apps = apps
        self.hub = hub
        self.now = now
        # pattern -> method -> (handler, body limit, query parameters besides the auth ones)
        self.routes: dict[tuple[str, ...], dict[bytes, tuple[Handler, int, tuple[str, ...]]]] = {
            ("events",): {b"POST": (self.events, MAX_BODY, ())},
            ("batch_events",): {b"POST": (self.batchEvents, MAX_BATCH_BODY, ())},
            ("channels",): {b"GET": (self.channels, MAX_BODY, ("filter_by_prefix", "info"))},
            ("channels", "*"): {b"GET": (self.channel, MAX_BODY, ("info",))},
            ("channels", "*", "users"): {b"GET": (self.users, MAX_BODY, ())},
            ("users", "*", "terminate_connections"): {b"POST": (self.terminate, MAX_BODY, ())},
        }
        self.publishHandlers = (self.events, self.batchEvents)
        self.published = 0  # events the broker took (a batch counts each of its events)
        # The signature check, an attribute so the recorder can wrap it (pushsvc.recording).
        self.verify: Callable[..., None] = verifyApiRequest
        self.appStats = AppStats()  # the service shares its own (with the WebSocket side)
        # app id -> (tokens, when counted): max_api_requests_per_second, one bucket an app
        self._buckets: dict[str, tuple[float, float]] = {}
        # The fast path's commit, an attribute so the recorder can wrap it (pushsvc.recording).
        self.commitPublish: Callable[[CheckedPublish, Answer], None] = self._commit

    def metrics(self) -> list[tuple[str, str, str, float]]:
        """C{(name, help, type, value)} for C{/metrics}."""
        return [
            (
                "pushsvc_api_events_published_total",
                "Events published through the HTTP API (a batch counts each one)",
                "counter",
                self.published,
            )
        ]

    def render(self, request: Request) -> bytes | int:
        return respond(request, self.dispatch)

    def route(
        self, segments: list[str], method: bytes
    ) -> tuple[Handler, int, tuple[str, ...], list[str]]:
        for pattern, methods in self.routes.items():
            if len(pattern) != len(segments):
                continue
            if all(p == "*" or p == s for p, s in zip(pattern, segments, strict=True)):
                if method not in methods:
                    allowed = ", ".join(m.decode() for m in methods)
                    raise HTTPError(405, f"Use {allowed} here.", headers={"Allow": allowed})
                handler, limit, query = methods[method]
                args = [s for p, s in zip(pattern, segments, strict=True) if p == "*"]
                return handler, limit, query, args
        raise HTTPError(404, "There is no such endpoint in the HTTP API.")

    def dispatch(self, request: Request) -> Coroutine[Any, Any, Reply]:
        """The shared checks; then the endpoint's coroutine."""
        try:
            segments = [bytes(s).decode("utf-8") for s in request.postpath or []]
            rawPath = request.path.decode("utf-8")
            path = unquote_to_bytes(rawPath).decode("utf-8")
        except UnicodeDecodeError:
            raise HTTPError(400, "The path is not valid UTF-8.") from None
        if not segments or not segments[0]:
            raise HTTPError(404, "Say which app: /apps/{app_id}/...")
        app = self.apps.byId(segments[0])
        if app is None:
            raise HTTPError(404, f"There is no app with id {segments[0]!r}.")
        handler, limit, queryNames, args = self.route(segments[1:], request.method)
        if handler in self.publishHandlers:
            request.publish = True  # type: ignore[attr-defined]  # see PushSite.log
        body = readBody(request, limit)
        params = queryParams(request.uri, queryNames)
        try:
            method = request.method.decode("ascii")
            self.verify(app, method, path, params, body, self.now(), rawPath=rawPath)
        except ApiAuthError as e:
            raise HTTPError(e.status, e.message) from None
        if not app.enabled:
            raise HTTPError(403, "This app is disabled.")
        counters = self.appStats.of(app.id)
        counters.apiRequests += 1
        if app.maxApiRequestsPerSecond and not self._takeToken(app):
            counters.apiRateLimited += 1
            raise HTTPError(
                429,
                f"Over {app.maxApiRequestsPerSecond} API requests a second for this app.",
                headers={"Retry-After": "1"},
            )
        return handler(Call(app, args, params, body))

    # -- the fast path (pushsvc.http.channel.BoundedHTTPChannel reads the request) ---------------

    def checkPublish(self, target: bytes, body: bytes) -> CheckedPublish | None:
        """
        The publish C{POST target} with C{body} asks for, if the full path would publish it and
        answer C{200 {}} once its signature is right: every check of L{dispatch} and of the
        endpoint but the signature (which L{commitPublish} makes, recorded, as dispatch does),
        none of them counted or recorded; None for anything else (another error, C{info}, an
        unusual path), which the full path then answers as it always did. No effect.
        """
        rawPath, _, query = target.partition(b"?")
        if b"%" in rawPath or not rawPath.isascii():
            return None
        path = rawPath.decode("ascii")
        segments = path.split("/")  # "", "apps", id, endpoint
        if len(segments) != 4:
            return None
        endpoint = segments[3]
        if endpoint == "events":
            limit = MAX_BODY
        elif endpoint == "batch_events":
            limit = MAX_BATCH_BODY
        else:
            return None
        app = self.apps.byId(segments[2])
        if app is None or not app.enabled or len(body) > limit:
            return None
        try:
            params = _plainQuery(query) if _PLAIN_QUERY.match(query) else queryParams(target, ())
            now = self.now()
            obj = parseJSONObject(body)
            if endpoint == "events":
                events = [parseEvent(obj, app)]
            else:
                batch = obj.get("batch")
                if not isinstance(batch, list) or not 0 < len(batch) <= MAX_BATCH:
                    return None
                if not all(isinstance(item, dict) for item in batch):
                    return None
                events = [parseEvent(item, app, batchItem=True) for item in batch]
        except Exception:  # an error (or a bug) the full path answers as it always did
            return None
        if any(event.info for event in events):
            return None  # the reply needs the broker's answers: the full path
        if app.maxApiRequestsPerSecond and not self._hasToken(app, now):
            return None
        return CheckedPublish(app, target, path, params, body, events, now)

    def _commit(self, checked: CheckedPublish, answer: Answer) -> None:
        """
        Publish what L{checkPublish} passed, as L{dispatch} and the endpoint would: the signature
        check (recorded), the counters, the rate limiter's token, the hub; then C{answer} the
        reply: at once when the broker took every event at once (the in-process broker), else
        when it has (or a 503, or a logged 500, as the full path would).
        """
        app = checked.app
        path = checked.path
        try:
            self.verify(app, "POST", path, checked.params, checked.body, checked.now, rawPath=path)
        except ApiAuthError as e:  # dispatch's answer: before any coroutine, so not chunked
            answer(e.status, {"error": e.message}, {}, False)
            return
        counters = self.appStats.of(app.id)
        counters.apiRequests += 1
        if app.maxApiRequestsPerSecond:
            self._takeToken(app)
        events = checked.events
        for i, event in enumerate(events):
            d = self.hub.publish(app, event.channels, event.name, event.data, event.socketId)
            if d.called and d.result is None:
                self.published += 1
                counters.published += 1
                continue
            # Not taken at once, or failed: the rest waits, as the full path's awaits do.
            rest = ensureDeferred(self._publishRest(app, d, events[i + 1 :]))
            rest.addCallbacks(
                lambda _: answer(200, {}, {}, True), partial(self._failed, checked, answer)
            )
            return
        answer(200, {}, {}, True)

    async def _publishRest(self, app: App, first: Deferred[None], rest: list[Event]) -> None:
        await brokerCall(lambda: first)
        self.published += 1
        self.appStats.of(app.id).published += 1
        for event in rest:
            await self.publish(app, event)

    def _failed(self, checked: CheckedPublish, answer: Answer, f: Failure) -> None:
        if isinstance(f.value, HTTPError):
            answer(f.value.status, {"error": f.value.message}, f.value.headers, True)
            return
        util.log.failure("error handling {method} {uri}", f, method=b"POST", uri=checked.target)
        answer(500, {"error": "Internal server error."}, {}, True)

    def _hasToken(self, app: App, now: float) -> bool:
        """Whether L{_takeToken} would give C{app} a token at C{now}; takes none."""
        rate = float(app.maxApiRequestsPerSecond)
        tokens, at = self._buckets.get(app.id, (rate, now))
        return min(rate, tokens + max(now - at, 0.0) * rate) >= 1.0

    def _takeToken(self, app: App) -> bool:
        """
        Spend one of C{app}'s API tokens (a bucket of C{max_api_requests_per_second}, refilled
        at that rate, in this process); False when there is none. Signed requests only count, so
        no one else can spend an app's allowance.
        """
        rate = float(app.maxApiRequestsPerSecond)
        now = self.now()
        tokens, at = self._buckets.get(app.id, (rate, now))
        tokens = min(rate, tokens + max(now - at, 0.0) * rate)
        if tokens < 1.0:
            self._buckets[app.id] = (tokens, now)
            return False
        self._buckets[app.id] = (tokens - 1.0, now)
        return True

    async def publish(self, app: App, event: Event) -> None:
        # No log line here: this is the hot path. The access log has the failed ones (and every
        # one with --log-publishes), /metrics the count.
        await brokerCall(
            self.hub.publish, app, event.channels, event.name, event.data, event.socketId
        )
        self.published += 1
        self.appStats.of(app.id).published += 1

    async def channelAttributes(self, app: App, event: Event) -> dict[str, dict[str, int]]:
        out = {}
        for channel in event.channels:
            info = await brokerCall(self.hub.channelInfo, app, channel)
            out[channel] = attributes(info, event.info, channel)
        return out

    async def events(self, call: Call) -> Reply:
        event = parseEvent(parseJSONObject(call.body), call.app)
        await self.publish(call.app, event)
        if not event.info:
            return 200, {}
        return 200, {"channels": await self.channelAttributes(call.app, event)}

    async def batchEvents(self, call: Call) -> Reply:
        batch = parseJSONObject(call.body).get("batch")
        if not isinstance(batch, list) or not 0 < len(batch) <= MAX_BATCH:
            raise HTTPError(400, f"batch must be a list of 1 to {MAX_BATCH} events.")
        events = []
        for i, item in enumerate(batch):
            try:
                if not isinstance(item, dict):
                    raise HTTPError(400, "an event must be a JSON object.")
                events.append(parseEvent(item, call.app, batchItem=True))
            except HTTPError as e:
                raise HTTPError(e.status, f"batch[{i}]: {e.message}") from None
        # All are validated before any is published, so a bad one does not leave half a batch.
        for event in events:
            await self.publish(call.app, event)
        if not any(event.info for event in events):
            return 200, {}
        replies = []
        for event in events:
            attrs = await self.channelAttributes(call.app, event) if event.info else {}
            replies.append(attrs.get(event.channels[0], {}))
        return 200, {"batch": replies}

    async def channels(self, call: Call) -> Reply:
        prefix = call.params.get("filter_by_prefix") or None
        if prefix is not None and len(prefix) > MAX_NAME:
            raise HTTPError(400, f"filter_by_prefix is longer than {MAX_NAME} characters.")
        asked = parseInfo(call.params.get("info"))
        if "user_count" in asked and not (prefix or "").startswith("presence-"):
            raise HTTPError(
                400, "info=user_count needs filter_by_prefix=presence- (presence channels only)."
            )
        occupied = await brokerCall(self.hub.occupiedChannels, call.app, prefix)
        return 200, {
            "channels": {
                name: attributes(info, asked, name) for name, info in sorted(occupied.items())
            }
        }

    async def channel(self, call: Call) -> Reply:
        name = validChannel(call.args[0])
        asked = parseInfo(call.params.get("info"), (*INFO_ATTRIBUTES, "cache"))
        if "user_count" in asked and not name.startswith("presence-"):
            raise HTTPError(400, "info=user_count is for presence channels only.")
        if "cache" in asked and not isCacheChannel(name):
            raise HTTPError(400, "info=cache is for cache channels only.")
        info = await brokerCall(self.hub.channelInfo, call.app, name)
        reply: dict[str, Any] = {"occupied": info.occupied, **attributes(info, asked, name)}
        if "cache" in asked:
            # The event kept for the channel and the seconds it is kept for: absent when none.
            cached = await brokerCall(self.hub.cacheInfo, call.app, name)
            if cached is not None:
                reply["cache"] = cached
        return 200, reply

    async def users(self, call: Call) -> Reply:
        name = validChannel(call.args[0])
        if not name.startswith("presence-"):
            raise HTTPError(400, "Only presence channels have users.")
        ids = await brokerCall(self.hub.presenceUserIds, call.app, name)
        return 200, {"users": [{"id": userId} for userId in ids]}

    async def terminate(self, call: Call) -> Reply:
        userId = validUserId(call.args[0])
        if call.body.strip():
            parseJSONObject(call.body)
        await brokerCall(self.hub.terminateUserConnections, call.app, userId)
        log.info(
            "terminated the connections of user {user} of app {app}", user=userId, app=call.app.id
        )
        return 200, {}


class DefaultAppUsersAPI(PusherAPI):
    """
    C{/users/{id}/terminate_connections} for the app whose key signed it (C{auth_key}; else the
    default app): the path the official Python SDK (pusher 3.3) posts to, without the
    C{/apps/{app_id}} prefix of the HTTP API reference. The request is still signed over the
    path it was sent to.
    """

    def dispatch(self, request: Request) -> Coroutine[Any, Any, Reply]:
        # With several apps, the app is the one whose key signed the request (auth_key).
        keys = parse_qs(request.uri.partition(b"?")[2]).get(b"auth_key") or [b""]
        app = self.apps.byKey(keys[0].decode("utf-8", "replace")) or self.apps.default
        request.postpath = [app.id.encode(), b"users", *(request.postpath or [])]
        return super().dispatch(request)


def makeApiResource(apps: Apps, hub: IHub, now: Callable[[], float]) -> PusherAPI:
    """The resource to mount at C{/apps}."""
    return PusherAPI(apps, hub, now)


def makeUsersResource(apps: Apps, hub: IHub, now: Callable[[], float]) -> IResource:
    """The resource to mount at C{/users} (see L{DefaultAppUsersAPI})."""
    return DefaultAppUsersAPI(apps, hub, now)
