"""The HTTP resource tree: chat pages, chat API, Pusher HTTP API, webhook, WebSocket, health."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site
from twisted.web.static import File

from pushsvc.httputil import HTTPError, errorBody

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

    def directoryListing(self) -> Resource:
        return JSONNotFound()


class JSONNotFound(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        return errorBody(request, HTTPError(404, "There is nothing at this address."))


class PushRequest(Request):
    """Adds the headers every reply should carry."""

    def process(self) -> None:
        self.setHeader(b"x-content-type-options", b"nosniff")
        self.setHeader(b"referrer-policy", b"same-origin")
        self.setHeader(b"content-security-policy", PAGE_POLICY)
        super().process()


def makeSite(
    pages: Path,
    api: IResource,
    pusherApi: IResource,
    notify: IResource,
    websocket: IResource,
    health: IResource,
    metrics: IResource,
) -> Site:
    root = Pages(str(pages))
    root.indexNames = ["index.html"]
    root.childNotFound = JSONNotFound()  # type: ignore[assignment]
    root.putChild(b"api", api)
    root.putChild(b"apps", pusherApi)
    root.putChild(b"notify", notify)
    root.putChild(b"app", websocket)
    root.putChild(b"healthz", health)
    root.putChild(b"metrics", metrics)
    site = Site(root)
    site.requestFactory = PushRequest
    site.displayTracebacks = False
    return site
