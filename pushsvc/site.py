"""The HTTP resource tree: chat pages, chat API, Pusher HTTP API, webhook, WebSocket, health."""

from __future__ import annotations

import warnings
from importlib import resources
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.web import http
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from pushsvc.httputil import HTTPError, errorBody

with warnings.catch_warnings():
    # Importing it builds three default error pages with a constructor deprecated since Twisted
    # 22.10 (unused here: Pages answers with JSON); that is three warnings at every start.
    warnings.simplefilter("ignore", DeprecationWarning)
    from twisted.web.static import File

MAX_REQUEST_BODY = 1024 * 1024  # above every resource's own limit

PAGE_POLICY = (
    b"default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
    b"style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; "
    b"frame-ancestors 'none'; form-action 'self'"
)


def webRoot() -> Path:
    """
    Where the chat pages are: inside the installed package (C{pushsvc/web}), or, when running
    from a source checkout, the checkout's top-level C{web/}.
    """
    installed = Path(str(resources.files("pushsvc"))) / "web"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parent.parent / "web"


class Pages(File):
    """Static files with no directory listings and C{index.html} at the root."""

    def getChild(self, path: bytes, request: Request) -> Any:
        if b"\x00" in path:  # the file system would raise, and log a traceback, for these
            return JSONNotFound()
        return super().getChild(path, request)

    def directoryListing(self) -> Resource:
        return JSONNotFound()


class JSONNotFound(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        return errorBody(request, HTTPError(404, "There is nothing at this address."))


class PushRequest(Request):
    """
    Adds the headers every reply should carry, and refuses bodies over L{MAX_REQUEST_BODY}
    while they arrive: twisted.web would otherwise spool any body, however large, to a file
    before a resource could say no. Each resource still applies its own, smaller limit.
    """

    _received = 0
    _tooLarge = False
    # An HTTP API publish (set by the API): logged when it fails, or when the site logs all.
    publish = False

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > MAX_REQUEST_BODY:
            self._tooLarge = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._tooLarge:
            return
        self._received += len(data)
        if self._received > MAX_REQUEST_BODY:
            self._tooLarge = True
            assert self.content is not None
            self.content.seek(0)
            self.content.truncate()
            return
        super().handleContentChunk(data)

    def process(self) -> None:
        self.setHeader(b"x-content-type-options", b"nosniff")
        self.setHeader(b"referrer-policy", b"same-origin")
        self.setHeader(b"content-security-policy", PAGE_POLICY)
        if self._tooLarge:
            error = HTTPError(413, f"The request body is larger than {MAX_REQUEST_BODY} bytes.")
            self.write(errorBody(self, error))
            self.finish()
            return
        super().process()


class PushSite(Site):
    """
    A Site that knows its open HTTP connections, so that a stop can close them.

    Its access log leaves out the HTTP API's successful publishes unless C{logPublishes}: at a
    publish rate worth having, those lines would be most of the log, and writing one through
    the log system costs about as much as the rest of the publish (~150 us). Failed ones (4xx,
    5xx) are logged; C{/metrics} counts the events published
    (C{pushsvc_api_events_published_total}).
    """

    logPublishes = False

    def __init__(self, resource: IResource) -> None:
        # No form parsing of every POST body into request.args: twisted.web does it with the
        # email package (~100 us a request, on the publish path too) and whole multipart bodies.
        # The one form endpoint, /api/pusher/auth, reads its body itself (httputil.formArgs).
        super().__init__(resource, parsePOSTFormSubmission=False)
        self.channels: set[Any] = set()
        self._whenEmpty: list[Deferred[None]] = []

    def log(self, request: http.Request) -> None:
        if getattr(request, "publish", False) and request.code < 400 and not self.logPublishes:
            return
        super().log(request)

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        if channel is not None:
            self.channels.add(channel)
            lost = channel.connectionLost

            def connectionLost(reason: Any) -> None:
                lost(reason)
                self.forgetChannel(channel)

            channel.connectionLost = connectionLost
        return channel

    def forgetChannel(self, channel: Any) -> None:
        """
        C{channel} is gone, or no longer HTTP: a WebSocket took its connection over (the
        registry closes those on a stop).
        """
        self.channels.discard(channel)
        if not self.channels:
            waiters, self._whenEmpty = self._whenEmpty, []
            for d in waiters:
                d.callback(None)

    def closeConnections(self) -> Deferred[None]:
        """
        Close idle keep-alive connections now, busy ones once their response is written.
        Fires when every connection is gone.
        """
        for wrapper in list(self.channels):
            channel = getattr(wrapper, "_channel", wrapper)  # the HTTP/1.1 or H2 protocol
            if getattr(channel, "requests", None):
                channel.persistent = False
            elif channel.transport is not None:
                channel.transport.loseConnection()
        if not self.channels:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._whenEmpty.append(d)
        return d


def makeSite(
    pages: Path,
    api: IResource,
    pusherApi: IResource,
    pusherUsers: IResource,
    notify: IResource,
    websocket: IResource,
    health: IResource,
    metrics: IResource,
) -> PushSite:
    root = Pages(str(pages))
    root.indexNames = ["index.html"]
    root.childNotFound = JSONNotFound()  # type: ignore[assignment]
    root.putChild(b"api", api)
    root.putChild(b"apps", pusherApi)
    root.putChild(b"users", pusherUsers)
    root.putChild(b"notify", notify)
    root.putChild(b"app", websocket)
    root.putChild(b"healthz", health)
    root.putChild(b"metrics", metrics)
    site = PushSite(root)
    site.requestFactory = PushRequest
    site.displayTracebacks = False
    return site
