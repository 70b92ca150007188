"""
Recording by composition: the resource tree, the store, the broker, the signature check and the
fan-out are each wrapped once, where the service builds them (L{instrument}); no handler records
itself. Each wrapper costs a few attribute look-ups and two clock reads per call; the fan-out is
recorded as one call per publish around C{Registry.deliver}, never per subscriber.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource, getChildForRequest
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from pushsvc.interfaces import IBroker
from pushsvc.recording.recorder import Call, Recorder, truncate
from pushsvc.store import IStore

Classify = Callable[[str], tuple[str, str | None]]  # path -> (endpoint, app id or None)

MAX_PATH = 200


class RecordingRoot(Resource):
    """
    The site's root: the real tree finds the resource as it always did; that resource then
    renders as the current request of the recorder (see L{RecordedRender}).
    """

    def __init__(self, root: IResource, recorder: Recorder, classify: Classify) -> None:
        super().__init__()
        self.root = root
        self.recorder = recorder
        self.classify = classify

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        # getChildForRequest moved this segment to prepath to ask us: put it back and let the
        # real root resolve the whole path as before.
        assert request.prepath is not None and request.postpath is not None
        request.postpath.insert(0, request.prepath.pop())
        return RecordedRender(getChildForRequest(self.root, request), self)


class RecordedRender(Resource):
    """Renders C{leaf} with a L{RequestRecord} current, ended when the request finishes."""

    isLeaf = True

    def __init__(self, leaf: IResource, root: RecordingRoot) -> None:
        super().__init__()
        self.leaf = leaf
        self.root = root

    def render(self, request: Request) -> Any:
        recorder = self.root.recorder
        path = truncate(request.path.decode("utf-8", "replace"), MAX_PATH)
        endpoint, appId = self.root.classify(path)
        record = recorder.begin(request.method.decode("ascii", "replace"), path, endpoint, appId)
        token = recorder.enter(record)
        try:
            result = self.leaf.render(request)
        except BaseException:
            recorder.end(record, 500)
            raise
        finally:
            recorder.leave(token)
        if result is NOT_DONE_YET:
            if request.finished:  # answered during render (nothing waited)
                recorder.end(record, request.code)
            elif (request.getHeader(b"upgrade") or b"").lower() == b"websocket":
                recorder.end(record, 101)  # the connection is the WebSocket's from now on
            else:
                request.notifyFinish().addBoth(lambda _: recorder.end(record, request.code))
        else:
            recorder.end(record, request.code)
        return result


def recordedCommit(recorder: Recorder, classify: Classify, commit: Any) -> Any:
    """
    The HTTP API's fast publish (L{pushsvc.api.PusherAPI.commitPublish}) recorded as
    L{RecordedRender} records a request: begun when it commits, its calls (signature, broker,
    fan-out) while it runs, ended with the status it answers, once the reply is written.
    """

    def recorded(checked: Any, answer: Any) -> None:
        path = truncate(checked.path, MAX_PATH)
        endpoint, appId = classify(path)
        record = recorder.begin("POST", path, endpoint, appId)

        def answered(status: int, obj: Any, headers: Any, chunked: bool) -> None:
            answer(status, obj, headers, chunked)
            recorder.end(record, status)

        token = recorder.enter(record)
        try:
            commit(checked, answered)
        except BaseException:
            recorder.end(record, 500)
            raise
        finally:
            recorder.leave(token)

    return recorded


def _recordDeferred(
    recorder: Recorder,
    kind: str,
    name: str,
    detail: dict[str, Any],
    f: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    rows: bool = False,
) -> Any:
    """Call C{f}; record it as one call that ends when its Deferred (if any) fires."""
    call = recorder.start(kind, name, detail)
    assert call is not None
    began = recorder.clock.seconds()
    try:
        result = f(*args, **kwargs)
    except BaseException:
        recorder.finish(call, began, error=True)
        raise
    if not isinstance(result, Deferred):
        recorder.finish(call, began)
        return result

    def ok(value: Any, c: Call = call) -> Any:
        if rows:
            isList = isinstance(value, list | tuple)
            c.detail["rows"] = len(value) if isList else int(value is not None)
        recorder.finish(c, began)
        return value

    def failed(f: Failure, c: Call = call) -> Failure:
        c.detail["error"] = truncate(f.getErrorMessage(), 120)
        recorder.finish(c, began, error=True)
        return f

    return result.addCallbacks(ok, failed)


@implementer(IStore)
class RecordingStore:
    """An L{IStore} that records each of its calls (which query, rows) and forwards it."""

    def __init__(self, store: IStore, recorder: Recorder) -> None:
        self._store = store
        self._recorder = recorder
        self._methods = frozenset(
            name for name in IStore.names(all=True) if callable(getattr(store, name, None))
        )

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if name not in self._methods:
            return attr

        def recorded(*args: Any, **kwargs: Any) -> Any:
            return _recordDeferred(
                self._recorder, "store", name, {"query": name}, attr, args, kwargs, rows=True
            )

        return recorded


def envelopeFields(message: bytes) -> tuple[str, dict[str, Any]] | None:
    """The debug console's view of a hub envelope: (kind, fields), data truncated."""
    try:
        kind, _appId, channel, event, data, exceptSocketId, userId = json.loads(message)
    except (ValueError, TypeError):
        return None
    name = {"e": "api_message", "c": "client_event", "m": "member", "t": "terminate"}.get(kind)
    if name is None:
        return None
    fields: dict[str, Any] = {"channel": channel, "event": event}
    if isinstance(data, str):
        fields["data"] = truncate(data)
    if userId:
        fields["user_id"] = truncate(str(userId), 80)
    if exceptSocketId and kind == "c":
        fields["socket_id"] = exceptSocketId
    return name, fields


@implementer(IBroker)
class RecordingBroker:
    """An L{IBroker} that records publishes and other broker calls, and feeds the console."""

    def __init__(self, broker: IBroker, recorder: Recorder, command: str) -> None:
        self._broker = broker
        self._recorder = recorder
        self._command = command  # what a publish is on the wire (PUBLISH, in-process)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._broker, name)

    def setReceiver(self, receive: Any) -> None:
        self._broker.setReceiver(receive)

    def setHealthListener(self, listener: Any) -> None:
        self._broker.setHealthListener(listener)

    def start(self) -> Any:
        return self._broker.start()

    def stop(self) -> Any:
        return self._broker.stop()

    def publish(self, appId: str, channel: str, message: bytes, cache: bytes | None = None) -> Any:
        recorder = self._recorder
        recorder.consoleEnvelope(appId, message)  # decoded only when a console shows it
        detail = {"command": self._command, "channel": truncate(channel, 80), "bytes": len(message)}
        args: tuple[Any, ...] = (appId, channel, message)
        if cache is not None:
            args += (cache,)
        publish = self._broker.publish
        return _recordDeferred(recorder, "broker", "publish", detail, publish, args, {})

    def cached(self, appId: str, channel: str) -> Any:
        return self._call("cached", self._broker.cached, appId, channel)

    def subscribe(self, appId: str, channel: str) -> Any:
        return self._call("subscribe", self._broker.subscribe, appId, channel)

    def unsubscribe(self, appId: str, channel: str) -> Any:
        return self._call("unsubscribe", self._broker.unsubscribe, appId, channel)

    def claim(self, appId: str, key: str, ttl: float) -> Any:
        # The key is a request signature: never shown.
        return _recordDeferred(
            self._recorder,
            "broker",
            "claim",
            {"command": "claim"},
            self._broker.claim,
            (appId, key, ttl),
            {},
        )

    def _call(self, name: str, f: Callable[..., Any], appId: str, channel: str) -> Any:
        detail = {"command": name, "channel": truncate(channel, 80)}
        return _recordDeferred(self._recorder, "broker", name, detail, f, (appId, channel), {})


def recordedCall(
    recorder: Recorder,
    kind: str,
    name: str,
    f: Callable[..., Any],
    detail: dict[str, Any] | None = None,
) -> Callable[..., Any]:
    """
    C{f} recorded as a call of C{kind} (e.g. C{webhook} around the one function that sends a
    webhook POST): it ends when C{f} returns, or when the Deferred it returns fires.
    """

    def recorded(*args: Any, **kwargs: Any) -> Any:
        return _recordDeferred(recorder, kind, name, dict(detail or {}), f, args, kwargs)

    return recorded


def recordedWebhookPost(recorder: Recorder, post: Callable[..., Any]) -> Callable[..., Any]:
    """
    The webhook sender's C{post(url, body, headers)} recorded as a C{webhook} call: the URL's
    host and the body's size (never the URL's path or query, which may hold a token).
    """
    from urllib.parse import urlsplit

    def recorded(url: str, body: bytes, headers: dict[str, str]) -> Any:
        detail = {"host": urlsplit(url).netloc.rpartition("@")[2], "bytes": len(body)}
        return _recordDeferred(recorder, "webhook", "POST", detail, post, (url, body, headers), {})

    return recorded


def recordedCheck(recorder: Recorder, name: str, check: Callable[..., Any]) -> Callable[..., Any]:
    """C{check} (a signature check), recorded as an C{auth} call; raises what it raises."""
    return recordedCall(recorder, "auth", name, check, {"check": name})


def _frameLength(payload: int) -> int:
    return payload + (2 if payload < 126 else 4 if payload < 65536 else 10)


def instrumentRegistry(registry: Any, recorder: Recorder) -> None:
    """
    Record each fan-out as one call around C{registry.deliver} (subscribers reached, bytes,
    write time, queued or not), and tell the debug console of connections and subscriptions.
    The per-subscriber loop inside C{deliver} is not touched.
    """
    deliver = registry.deliver
    seconds = recorder.clock.seconds
    fanOut = recorder.fanOut

    def recordedDeliver(
        appId: str, channel: str, payload: bytes, exceptSocketId: str | None = None
    ) -> int:
        began = seconds()
        n: int = deliver(appId, channel, payload, exceptSocketId)
        queued = bool(registry._dirty)
        fanOut(appId, channel, n, _frameLength(len(payload)), began, seconds(), queued)
        return n

    registry.deliver = recordedDeliver

    subscribe = registry.subscribe
    unsubscribe = registry.unsubscribe
    addConnection = registry.addConnection
    removeConnection = registry.removeConnection
    event = recorder.consoleEvent

    def recordedSubscribe(conn: Any, channel: str, member: Any = None) -> Any:
        result = subscribe(conn, channel, member)
        event(conn.appId, "subscribed", {"channel": channel, "socket_id": conn.socketId})
        return result

    def recordedUnsubscribe(conn: Any, channel: str) -> Any:
        result = unsubscribe(conn, channel)
        event(conn.appId, "unsubscribed", {"channel": channel, "socket_id": conn.socketId})
        return result

    def recordedAdd(conn: Any) -> None:
        addConnection(conn)
        event(conn.appId, "connection", {"socket_id": conn.socketId})

    def recordedRemove(conn: Any) -> None:
        removeConnection(conn)
        event(conn.appId, "disconnection", {"socket_id": conn.socketId})

    registry.subscribe = recordedSubscribe
    registry.unsubscribe = recordedUnsubscribe
    registry.addConnection = recordedAdd
    registry.removeConnection = recordedRemove


# What a client sends that is recorded as a request of its own (pings and pongs are not).
_RECORDED_EVENTS = ((b'"pusher:subscribe"', "pusher:subscribe"), (b'"client-', "client event"))


def instrumentWebSocket(factory: Any, recorder: Recorder) -> None:
    """
    Record each subscribe and client event a WebSocket client sends, with the calls it makes
    (broker, fan-out), as a request of the ring: C{WS /app/{key} pusher:subscribe}. The factory's
    protocol class is replaced by a subclass whose C{onMessage} records, and then hands the frame
    on unchanged; other frames cost one substring search each.
    """
    base = factory.protocol
    onMessage = base.onMessage

    def recordedOnMessage(self: Any, payload: bytes, isBinary: bool) -> None:
        kind = None
        if not isBinary:
            for marker, name in _RECORDED_EVENTS:
                if marker in payload:
                    kind = name
                    break
        if kind is None:
            onMessage(self, payload, isBinary)
            return
        app = self.app
        record = recorder.begin(
            "WS",
            f"/app/{app.key if app is not None else ''} {kind}",
            f"ws {kind}",
            self.appId or None,
        )
        token = recorder.enter(record)
        try:
            onMessage(self, payload, isBinary)
        finally:
            recorder.leave(token)
            recorder.end(record, 200)

    factory.protocol = type(base.__name__, (base,), {"onMessage": recordedOnMessage})
