"""
The admin listener (C{--admin-listen}, loopback by default): the inside view's pages, their
JSON API, a server-sent-events stream, C{/metrics} and the detailed health.

    GET /                       the dashboard (static pages from pushsvc/admin/static)
    GET /api/requests?limit=N   the last N recorded requests, most recent first (1..1000, 100)
    GET /api/requests/{id}      one of them; 404 when it left the ring
    GET /api/stats              aggregates per endpoint and per call kind, and the live figures
    GET /api/stream[?app=ID]    text/event-stream: "figures" each second, "console" events
    GET /metrics                Prometheus text (L{pushsvc.admin.metrics})
    GET /healthz                every dependency, with addresses (the public one says less)

Beyond loopback every request needs the token (L{TokenGuard}).
"""

from __future__ import annotations

import hmac
import json
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from pushsvc.http.site import JSONNotFound, Pages, PushRequest
from pushsvc.http.util import HTTPError, JSONResource, errorBody, intArg, queryArg
from pushsvc.recording import Recorder

log = Logger()

STATIC = Path(__file__).resolve().parent / "static"
HISTORY = 300  # seconds of figures kept for the live chart
MAX_STREAMS = 16
TOKEN_COOKIE = b"pushsvc_admin"


class Figures:
    """
    One sample a second of the live figures, total and per app, kept for L{HISTORY} seconds:
    connections, channels, deliveries/s, publishes/s (local fan-outs), webhooks.
    """

    def __init__(
        self,
        clock: IReactorTime,
        registry: Any,
        perApp: Callable[[], dict[str, dict[str, int]]],
        recorder: Recorder | None,
        webhooks: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self.clock = clock
        self.registry = registry
        self.perApp = perApp
        self.recorder = recorder
        self.webhooks = webhooks
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.listeners: set[Callable[[dict[str, Any]], None]] = set()
        self._last: tuple[float, int, int, dict[str, list[int]]] | None = None
        self._loop = LoopingCall(self.sample)
        self._loop.clock = clock

    def start(self) -> None:
        self._loop.start(1.0, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def sample(self) -> dict[str, Any]:
        now = self.clock.seconds()
        r = self.registry
        byApp = self.perApp()
        counted = self.recorder.fanOutsByApp if self.recorder is not None else {}
        fanOuts = {k: list(v) for k, v in counted.items()}
        last = self._last
        self._last = (now, r.deliveries, r.publishes, fanOuts)
        span = (now - last[0]) if last else 0.0

        def rate(new: int, old: int) -> float:
            return round((new - old) / span, 1) if span > 0 else 0.0

        webhooks = self.webhooks() if self.webhooks is not None else {}
        apps: dict[str, Any] = {}
        for appId in sorted(set(byApp) | set(fanOuts) | set(webhooks)):
            figures = byApp.get(appId, {})
            old = last[3].get(appId, [0, 0]) if last else fanOuts.get(appId, [0, 0])
            new = fanOuts.get(appId, [0, 0])
            apps[appId] = {
                "connections": figures.get("pushsvc_connections", 0),
                "channels": figures.get("pushsvc_channels", 0),
                "deliveries_per_s": rate(new[1], old[1]),
                "publishes_per_s": rate(new[0], old[0]),
                "webhooks": webhooks.get(appId),
            }
        sample = {
            "t": now,
            "connections": len(r.openConnections()),
            "channels": sum(a["channels"] for a in apps.values()),
            "deliveries_per_s": rate(r.deliveries, last[1]) if last else 0.0,
            "publishes_per_s": rate(r.publishes, last[2]) if last else 0.0,
            "apps": apps,
        }
        self.history.append(sample)
        for listener in list(self.listeners):
            listener(sample)
        return sample


class RequestsResource(JSONResource):
    """C{/api/requests} and C{/api/requests/{id}}."""

    def __init__(self, recorder: Recorder | None) -> None:
        super().__init__()
        self.recorder = recorder

    def handle_GET(self, request: Request) -> tuple[int, Any]:
        if self.recorder is None:
            raise HTTPError(404, "Recording is off (--no-recording).")
        postpath = [p for p in (request.postpath or []) if p]
        if not postpath:
            limit = intArg(request, "limit", 100, 1, self.recorder.size)
            return 200, [r.asJSON() for r in self.recorder.recent(limit)]
        if len(postpath) > 1 or not postpath[0].isdigit() or len(postpath[0]) > 18:
            raise HTTPError(404, "There is no such request: give its id, a number.")
        record = self.recorder.get(int(postpath[0]))
        if record is None:
            raise HTTPError(404, "No request with this id is kept (the ring holds the latest).")
        return 200, record.asJSON()


class StatsResource(JSONResource):
    """C{/api/stats}: the recorder's aggregates, the live figures and their recent history."""

    def __init__(self, recorder: Recorder | None, figures: Figures) -> None:
        super().__init__()
        self.recorder = recorder
        self.figures = figures

    def handle_GET(self, request: Request) -> tuple[int, Any]:
        stats = self.recorder.stats() if self.recorder is not None else {}
        stats["recording"] = self.recorder is not None
        stats["figures"] = self.figures.history[-1] if self.figures.history else None
        stats["history"] = list(self.figures.history)
        return 200, stats


@implementer(IPushProducer)
class _Stream:
    """One server-sent-events client; events are dropped (and counted) while it cannot keep up."""

    def __init__(self, request: Request, app: str | None, owner: StreamResource) -> None:
        self.request = request
        self.app = app
        self.owner = owner
        self.paused = False
        self.dropped = 0

    def send(self, kind: str, data: Any) -> None:
        if self.paused:
            self.dropped += 1
            return
        payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        self.request.write(f"event: {kind}\ndata: {payload}\n\n".encode())

    def figures(self, sample: dict[str, Any]) -> None:
        self.send("figures", sample)

    def console(self, appId: str, at: float, kind: str, fields: dict[str, Any]) -> None:
        if self.app is not None and appId != self.app:
            return
        self.send("console", {"app_id": appId, "at": at, "kind": kind, **fields})

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.owner.forget(self)


class StreamResource(Resource):
    """C{/api/stream}: live figures and debug-console events, as server-sent events."""

    isLeaf = True

    def __init__(self, recorder: Recorder | None, figures: Figures) -> None:
        super().__init__()
        self.recorder = recorder
        self.figures = figures
        self.streams: set[_Stream] = set()

    def render_GET(self, request: Request) -> bytes | int:
        if len(self.streams) >= MAX_STREAMS:
            return errorBody(request, HTTPError(503, f"At most {MAX_STREAMS} streams are open."))
        try:
            app = queryArg(request, "app") or None
        except HTTPError as e:
            return errorBody(request, e)
        stream = _Stream(request, app, self)
        self.streams.add(stream)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.registerProducer(stream, True)
        request.write(b"retry: 2000\n\n")
        self.figures.listeners.add(stream.figures)
        if self.recorder is not None:
            for item in self.recorder.consoleItems():
                stream.console(*item)
            self.recorder.consoleListeners.add(stream.console)
        request.notifyFinish().addBoth(lambda _: self.forget(stream))
        return NOT_DONE_YET

    def forget(self, stream: _Stream) -> None:
        self.streams.discard(stream)
        self.figures.listeners.discard(stream.figures)
        if self.recorder is not None:
            self.recorder.consoleListeners.discard(stream.console)

    def closeAll(self) -> None:
        for stream in list(self.streams):
            self.forget(stream)
            try:
                stream.request.unregisterProducer()
                stream.request.finish()
            except Exception:
                log.failure("closing an admin stream")


class TokenGuard(Resource):
    """
    Every request needs the admin token: C{Authorization: Bearer TOKEN}, C{?token=TOKEN} (which
    also sets a same-site, HTTP-only cookie for the page's later requests), or that cookie.
    Compared in constant time; 401 with a JSON error otherwise.
    """

    def __init__(self, root: IResource, token: bytes) -> None:
        super().__init__()
        self.root = root
        self.token = token

    def _presented(self, request: Request) -> tuple[bytes | None, bool]:
        auth = request.getHeader(b"authorization") or b""
        if auth[:7].lower() == b"bearer ":
            return auth[7:].strip(), False
        values = (request.args or {}).get(b"token")
        if values:
            return bytes(values[0]), True
        return request.getCookie(TOKEN_COOKIE), False

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        token, fromQuery = self._presented(request)
        if token is None or not hmac.compare_digest(token, self.token):
            return _Unauthorized()
        if fromQuery:
            request.addCookie(TOKEN_COOKIE, self.token, path=b"/", httpOnly=True, sameSite="strict")
        request.postpath.insert(0, request.prepath.pop())  # type: ignore[union-attr]
        from twisted.web.resource import getChildForRequest

        child: IResource = getChildForRequest(self.root, request)
        return child


class _Unauthorized(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        return errorBody(
            request,
            HTTPError(401, "This admin listener needs its token (see --admin-token-file)."),
        )


class AdminSite(Site):
    """The admin listener's site: no access log (the dashboard's polling would fill it)."""

    def log(self, request: Any) -> None:
        pass


def makeAdminSite(
    recorder: Recorder | None,
    figures: Figures,
    metrics: IResource,
    health: IResource,
    token: bytes | None,
    clock: IReactorTime | None = None,
) -> tuple[AdminSite, StreamResource]:
    """The admin site (behind L{TokenGuard} when C{token} is given), and its stream resource."""
    root = Pages(str(STATIC))
    root.indexNames = ["index.html"]
    root.childNotFound = JSONNotFound()  # type: ignore[assignment]
    api = Resource()
    api.putChild(b"requests", RequestsResource(recorder))
    api.putChild(b"stats", StatsResource(recorder, figures))
    stream = StreamResource(recorder, figures)
    api.putChild(b"stream", stream)
    root.putChild(b"api", api)
    root.putChild(b"metrics", metrics)
    root.putChild(b"healthz", health)
    top: IResource = root if token is None else TokenGuard(root, token)
    site = AdminSite(top)
    site.requestFactory = PushRequest
    site.displayTracebacks = False
    if clock is not None:
        site.reactor = clock
    return site, stream


def loopbackOnly(description: str) -> bool:
    """Whether a server endpoint string listens on loopback only (or a UNIX socket)."""
    kind, _, rest = description.partition(":")
    kind = kind.lower()
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6", "ssl"):
        return False
    for part in rest.replace("\\:", "\x00").split(":"):
        key, sep, value = part.replace("\x00", ":").partition("=")
        if sep and key == "interface":
            return value.startswith("127.") or value in ("::1", "localhost")
    return False
