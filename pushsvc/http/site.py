"""The HTTP resource tree: chat pages, chat API, Pusher HTTP API, webhook, WebSocket, health."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web import http, server
from twisted.web.http import RESPONSES, combinedLogFormatter, datetimeToString
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from pushsvc.http.channel import HTTPLimits, channelFactory
from pushsvc.http.limits import OVER_ADDRESS, ConnectionLimits
from pushsvc.http.proxy import NOBODY, TrustedProxies, clientOf, peerAddress
from pushsvc.http.util import HTTPError, errorBody, jsonBytes
from pushsvc.waiters import Waiters

with warnings.catch_warnings():
    # Importing twisted.web.static builds its old HTML error pages (childNotFound, forbidden),
    # deprecated since Twisted 22.10: three warnings at start-up. Pages serves JSON errors.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"twisted\.web\.static")
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
    return Path(__file__).resolve().parents[2] / "web"


def _etagMatches(header: bytes | None, etag: bytes) -> bool:
    """Whether an C{If-None-Match} value names C{etag} (weak comparison, RFC 9110 13.1.2)."""
    if header is None:
        return False
    if header.strip() == b"*":
        return True
    tags = (tag.strip() for tag in header.split(b","))
    return etag in (tag[2:] if tag.startswith(b"W/") else tag for tag in tags)


class JSONForbidden(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        return errorBody(request, HTTPError(403, "This file cannot be read."))


class Pages(File):
    """
    Static files with no directory listings and C{index.html} at the root.

    Every file carries an C{ETag} (size and modification time) and C{Cache-Control: no-cache}:
    a browser keeps the file but asks each time, and gets a 304 with no body while it has not
    changed, so a new deploy is picked up at once. C{Range} is honoured for one range only: a
    request for several gets the whole file once, with 200 (twisted.web would send each range
    however many there were, overlapping or not, and its multi-range producer fails on very
    many).
    """

    forbidden = JSONForbidden()  # type: ignore[assignment]  # not twisted.web's HTML page

    def getChild(self, path: bytes, request: Request) -> Any:
        if b"\x00" in path:  # the file system would raise, and log a traceback, for these
            return JSONNotFound()
        return super().getChild(path, request)

    def directoryListing(self) -> Resource:
        return JSONNotFound()

    def etag(self) -> bytes:
        """The file's entity tag: its size and modification time, in hex."""
        info = os.stat(self.path)
        return b'"%x-%x"' % (info.st_size, info.st_mtime_ns)

    def render_GET(self, request: Request) -> Any:
        self.restat(False)
        if self.isfile():
            try:
                etag = self.etag()
            except OSError:
                return super().render_GET(request)  # gone meanwhile: its 404 or 403
            request.setHeader(b"etag", etag)
            request.setHeader(b"cache-control", b"no-cache")
            noneMatch = request.getHeader(b"if-none-match")
            if noneMatch is not None:
                if _etagMatches(noneMatch, etag):
                    request.setResponseCode(http.NOT_MODIFIED)
                    return b""
                # If-None-Match decides alone when present (RFC 9110 13.1.3).
                request.requestHeaders.removeHeader(b"if-modified-since")
            ifRange = request.getHeader(b"if-range")
            if ifRange is not None and ifRange.strip() != etag:
                request.requestHeaders.removeHeader(b"range")  # changed since: all of it
        return super().render_GET(request)

    render_HEAD = render_GET

    def makeProducer(self, request: Request, fileForReading: Any) -> Any:
        byteRange = request.getHeader(b"range")
        if byteRange is not None:
            try:
                single = len(self._parseRangeHeader(byteRange)) == 1
            except ValueError:
                single = False
            if not single:
                request.requestHeaders.removeHeader(b"range")  # the whole file, once
        return super().makeProducer(request, fileForReading)


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
        if self._refusedOverCap():
            return
        super().process()

    # Over a connection cap (http.limits): why, for the WebSocket resource to close with 4100.
    refusal: str | None = None

    def _refusedOverCap(self) -> bool:
        """Answer 503 when this request is over a connection cap; whether it was."""
        admit = getattr(getattr(self.channel, "site", None), "admitRequest", None)
        refusal = admit(self) if admit is not None else None
        if refusal is None:
            return False
        upgrade = (self.getHeader(b"upgrade") or b"").lower() == b"websocket"
        if upgrade and self.path.startswith(b"/app/"):
            self.refusal = refusal  # the handshake completes, then 4100 (pusher-js backs off)
            return False
        slot = getattr(self.channel, "connectionSlot", None)
        if slot is not None and not slot.proxied:
            self.channel.persistent = False
            self.setHeader(b"connection", b"close")
        body = errorBody(self, HTTPError(503, refusal, {"retry-after": "10"}))
        self.setHeader(b"content-length", b"%d" % len(body))
        self.write(body)
        self.finish()
        return True


class _ForwardedClient:
    """A finished request as the access log sees it: from the client a trusted proxy named."""

    def __init__(self, request: Any, address: Any) -> None:
        self._request = request
        self._address = address

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)

    def getClientAddress(self) -> Any:
        return self._address


def accessLogLine(timestamp: str, request: Any) -> str:
    """
    twisted.web's combined access-log line; behind one of C{--trusted-proxies} it names the
    client the proxy forwarded (L{clientOf}), not the proxy.
    """
    if getattr(getattr(request, "site", None), "trustedProxies", None):
        client = clientOf(request).address
        if client != getattr(request.getClientAddress(), "host", None):
            forwarded = (IPv6Address if ":" in client else IPv4Address)("TCP", client, 0)
            request = _ForwardedClient(request, forwarded)
    return str(combinedLogFormatter(timestamp, request))


class _FastPublishLog:
    """A publish the channel answered itself (http.channel), as the access log reads a request."""

    publish = True

    def __init__(self, site: Any, channel: Any, post: Any, code: int, sentLength: int) -> None:
        self.site = site
        self.channel = channel
        self._headers = post.headers
        self.method = b"POST"
        self.uri = post.target
        self.clientproto = b"HTTP/1.1"
        self.code = code
        self.sentLength = sentLength
        self.requestHeaders = Headers({k: [v] for k, v in post.headers.items()})

    def getClientAddress(self) -> Any:
        return self.channel.getPeer()

    def getHeader(self, name: bytes) -> bytes | None:
        value: bytes | None = self._headers.get(name.lower())
        return value


def _headerName(name: str) -> bytes:
    return "-".join(part.capitalize() for part in name.split("-")).encode()


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
    # Peers whose forwarding headers are believed (pushsvc.http.proxy.clientOf).
    trustedProxies: TrustedProxies = NOBODY
    # The HTTP API whose publishes the channels may answer themselves (http.channel), or None.
    publishAPI: Any = None

    def __init__(self, resource: IResource) -> None:
        # No form parsing of every POST body into request.args: twisted.web does it with the
        # email package (~100 us a request, on the publish path too) and whole multipart bodies.
        # The one form endpoint, /api/pusher/auth, reads its body itself (http.util.formArgs).
        super().__init__(resource, parsePOSTFormSubmission=False, logFormatter=accessLogLine)
        self.channels: set[Any] = set()
        self._whenEmpty: Waiters[None] = Waiters()
        self.limits = ConnectionLimits(2**31 - 1, 0)  # the service sets the configured caps

    # What every JSON reply of the HTTP API starts with (PushRequest.process, then twisted.web's
    # Request.process) before its Date, for the channel's fast path (publishReply).
    _replyHeaders = (
        b"X-Content-Type-Options: nosniff\r\n"
        b"Referrer-Policy: same-origin\r\n"
        b"Content-Security-Policy: " + PAGE_POLICY + b"\r\n"
        b"Server: " + server.version + b"\r\n"
        b"Date: "
    )
    _date = (0, b"")
    _ok = b""

    def publishReply(
        self, status: int, obj: Any, headers: Mapping[str, str], chunked: bool
    ) -> tuple[bytes, int]:
        """
        The bytes twisted.web writes for an HTTP API reply, and the length of its body, for the
        channel's fast path: C{chunked} as for a reply written after its render returned
        (C{http.util.respond}), else with a Content-Length as for one render returned.
        """
        now = int(time.time())
        if self._date[0] != now:
            date = datetimeToString(now)
            self._date = (now, date)
            self._ok = self._reply(200, b"{}", b"", date, True)  # nearly every publish's
        if status == 200 and not obj and not headers and chunked:
            return self._ok, 2
        body = jsonBytes(obj)
        extra = b"".join(_headerName(k) + b": " + v.encode() + b"\r\n" for k, v in headers.items())
        return self._reply(status, body, extra, self._date[1], chunked), len(body)

    def _reply(self, status: int, body: bytes, extra: bytes, date: bytes, chunked: bool) -> bytes:
        head = (
            b"HTTP/1.1 %d %s\r\n" % (status, RESPONSES.get(status, b"Unknown Status"))
            + self._replyHeaders
            + date
            + b"\r\n"
            + extra
            + b"Content-Type: application/json; charset=utf-8\r\n"
            b"Cache-Control: no-store\r\n"
        )
        if chunked:
            tail = b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        else:
            tail = b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        return head + tail

    def logFastPublish(self, channel: Any, post: Any, code: int, sentLength: int) -> None:
        """The access log line of a publish the channel answered itself, as for any request."""
        self.log(_FastPublishLog(self, channel, post, code, sentLength))  # type: ignore[arg-type]

    def stopFactory(self) -> None:
        logs = getattr(self.protocol, "logs", None)
        if logs is not None:
            logs.stop()
        super().stopFactory()

    def log(self, request: http.Request) -> None:
        if getattr(request, "publish", False) and request.code < 400 and not self.logPublishes:
            return
        super().log(request)

    def buildProtocol(self, addr: Any) -> Any:
        address = peerAddress(addr)
        slot = self.limits.admit(
            address, bool(self.trustedProxies) and self.trustedProxies.trusts(address)
        )
        if slot is None:
            return None  # over every cap and refusal slot: the port closes it at once
        channel = super().buildProtocol(addr)
        if channel is None:
            self.limits.release(slot)
        else:
            # The count follows the TCP connection, also once a WebSocket took it over: the slot
            # becomes the transport's connectionLost. The HTTP channel holds it for requests.
            getattr(channel, "_channel", channel).connectionSlot = slot
            made = channel.makeConnection

            def makeConnection(transport: Any) -> None:
                del channel.makeConnection
                slot.attach(transport)
                made(transport)

            channel.makeConnection = makeConnection
            self.channels.add(channel)
            lost = channel.connectionLost

            def connectionLost(reason: Any) -> None:
                lost(reason)
                self.forgetChannel(channel)
                self.limits.release(slot)  # at once if the transport was not hooked

            channel.connectionLost = connectionLost
        return channel

    def admitRequest(self, request: Any) -> str | None:
        """
        Why C{request} is refused over a connection cap (see L{pushsvc.http.limits}), or None.

        A trusted proxy's connection is counted under the client address its latest request
        forwards (a WebSocket's for as long as it lives), so the cap per address holds behind
        a proxy too; any other connection was counted by its peer when accepted.
        """
        slot = getattr(request.channel, "connectionSlot", None)
        if slot is None or (slot.refusal is None and not slot.proxied):
            return None
        if slot.refusal is not None:
            self.limits.refused += 1
            return str(slot.refusal)
        if self.limits.countUnder(slot, clientOf(request).address):
            return None
        return OVER_ADDRESS

    def forgetChannel(self, channel: Any) -> None:
        """
        C{channel} is gone, or no longer HTTP: a WebSocket took its connection over (the
        registry closes those on a stop).
        """
        self.channels.discard(channel)
        # buildProtocol's hooks refer to the channel they are set on: a cycle once it is done.
        inner = getattr(channel, "_channel", channel)
        for hook in ("connectionLost", "makeConnection"):
            vars(inner).pop(hook, None)
        if not self.channels:
            self._whenEmpty.fire()

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
        return self._whenEmpty.wait(done=not self.channels)


def makeSite(
    pages: Path,
    api: IResource,
    pusherApi: IResource,
    pusherUsers: IResource,
    notify: IResource,
    websocket: IResource,
    health: IResource,
    metrics: IResource,
    limits: HTTPLimits | None = None,
    clock: IReactorTime | None = None,
) -> PushSite:
    root = Pages(str(pages))
    root.indexNames = ["index.html"]
    root.childNotFound = JSONNotFound()  # type: ignore[assignment]  # twisted types it as a class; an instance works
    root.putChild(b"api", api)
    root.putChild(b"apps", pusherApi)
    root.putChild(b"users", pusherUsers)
    root.putChild(b"notify", notify)
    root.putChild(b"app", websocket)
    root.putChild(b"healthz", health)
    root.putChild(b"metrics", metrics)
    site = PushSite(root)
    site.requestFactory = PushRequest
    if clock is not None:
        site.reactor = clock
    site.protocol = channelFactory(limits or HTTPLimits(), site.reactor)  # type: ignore[method-assign]  # the channel factory Site calls
    site.displayTracebacks = False
    return site
