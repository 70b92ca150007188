"""
The Site and its request class: bodies over the cap are dropped while they arrive; the access
log leaves out successful publishes.
"""

from __future__ import annotations

import json
from io import BytesIO

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyChannel, DummyRequest

from pushsvc.api import makeApiResource
from pushsvc.apps import App, Apps
from pushsvc.http.site import MAX_REQUEST_BODY, PushRequest, PushSite
from pushsvc.http.util import HTTPError, formArgs, queryArg
from pushsvc.testing import FakeHub
from tests.helpers import asRequest
from tests.test_api import APP, BASE, NOW, signedURL


class BodyCapTests(SynchronousTestCase):
    def test_chunkedOverCapNotStored(self) -> None:
        """A chunked body is kept up to the cap; past it, what was kept is freed and no more."""
        request = PushRequest(DummyChannel())
        request.gotLength(None)
        chunk = b"x" * 65536
        for _ in range(MAX_REQUEST_BODY // len(chunk)):
            request.handleContentChunk(chunk)
        assert request.content is not None
        self.assertEqual(request.content.tell(), MAX_REQUEST_BODY)
        for _ in range(100):
            request.handleContentChunk(chunk)
        self.assertEqual(request.content.tell(), 0)
        self.assertTrue(request._tooLarge)

    def test_declaredOverCap(self) -> None:
        """A Content-Length over the cap stores nothing at all."""
        request = PushRequest(DummyChannel())
        request.gotLength(MAX_REQUEST_BODY + 1)
        request.handleContentChunk(b"x" * 1000)
        assert request.content is not None
        self.assertEqual(request.content.tell(), 0)

    def test_underCapKept(self) -> None:
        request = PushRequest(DummyChannel())
        request.gotLength(5)
        request.handleContentChunk(b"hello")
        assert request.content is not None
        request.content.seek(0)
        self.assertEqual(request.content.read(), b"hello")
        self.assertFalse(request._tooLarge)


class FormArgsTests(SynchronousTestCase):
    """The site leaves bodies alone; the one form endpoint reads its own with formArgs."""

    def request(self, body: bytes, ctype: bytes) -> DummyRequest:
        request = DummyRequest([b"api", b"pusher", b"auth"])
        request.method = b"POST"
        request.args = {b"q": [b"1"]}
        request.requestHeaders.setRawHeaders(b"content-type", [ctype])
        request.requestHeaders.setRawHeaders(b"content-length", [str(len(body)).encode()])
        asRequest(request).content = BytesIO(body)
        return request

    def test_urlencodedBody(self) -> None:
        """pusher-js's auth body (x-www-form-urlencoded) joins the query arguments."""
        request = self.request(
            b"socket_id=1.2&channel_name=presence-room-x",
            b"application/x-www-form-urlencoded; charset=UTF-8",
        )
        args = formArgs(asRequest(request))
        self.assertEqual(queryArg(asRequest(request), "socket_id", args), "1.2")
        self.assertEqual(queryArg(asRequest(request), "channel_name", args), "presence-room-x")
        self.assertEqual(queryArg(asRequest(request), "q", args), "1")

    def test_otherBodyIgnored(self) -> None:
        request = self.request(b"socket_id=1.2", b"text/plain")
        self.assertIsNone(queryArg(asRequest(request), "socket_id", formArgs(asRequest(request))))

    def test_bodyOverLimit(self) -> None:
        request = self.request(b"a=" + b"x" * 5000, b"application/x-www-form-urlencoded")
        with self.assertRaises(HTTPError) as e:
            formArgs(asRequest(request), 4096)
        self.assertEqual(e.exception.status, 413)

    def test_siteDoesNotParseForms(self) -> None:
        """PushSite hands form bodies to the resource untouched (no email-package parsing)."""
        from twisted.web.resource import Resource

        self.assertFalse(PushSite(Resource())._parsePOSTFormSubmission)


class _Lines:
    """An access log file: the lines written to it."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, data: str) -> None:
        self.lines.extend(data.splitlines())

    def close(self) -> None:
        pass


class AccessLogTests(SynchronousTestCase):
    """
    The access log has every request but the HTTP API's successful publishes, which it has only
    with logPublishes (twistd pushsvc --log-publishes).
    """

    def setUp(self) -> None:
        self.hub = FakeHub()
        root = Resource()
        self.api = makeApiResource(Apps([APP]), self.hub, lambda: float(NOW))
        root.putChild(b"apps", self.api)
        self.site = PushSite(root)
        self.site.requestFactory = PushRequest
        self.site.reactor = Clock()
        self.site.startFactory()
        self.addCleanup(self.site.stopFactory)
        self.log = _Lines()
        self.site.logFile = self.log

    def request(
        self, method: str, path: str, body: bytes = b"", secret: str | None = None
    ) -> bytes:
        """Send one signed request over a fresh HTTP connection; the status line's code."""
        app = APP if secret is None else App(APP.id, APP.key, secret)
        url = signedURL(method, path, body, None, app)[len(BASE) :]
        channel = self.site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(
            f"{method} {url} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        reply: bytes = transport.value()
        return reply.split(b" ", 2)[1]

    def publish(self, secret: str | None = None) -> bytes:
        body = json.dumps({"name": "e", "channel": "c", "data": "{}"}).encode()
        return self.request("POST", f"/apps/{APP.id}/events", body, secret)

    def test_successfulPublishNotLogged(self) -> None:
        """Not in the access log: in /metrics."""
        self.assertEqual(self.publish(), b"200")
        self.assertEqual(len(self.hub.published), 1)
        self.assertEqual(self.log.lines, [])
        self.assertEqual(
            self.api.metrics(),
            [
                (
                    "pushsvc_api_events_published_total",
                    "Events published through the HTTP API (a batch counts each one)",
                    "counter",
                    1,
                )
            ],
        )

    def test_failedPublishLogged(self) -> None:
        """A publish answered 4xx (here a wrong signature, 401) is logged, with its status."""
        self.assertEqual(self.publish(secret="wrong"), b"401")
        self.assertEqual(self.api.published, 0)
        self.assertEqual(len(self.log.lines), 1)
        self.assertIn('"POST /apps/3/events?', self.log.lines[0])
        self.assertIn('" 401 ', self.log.lines[0])

    def test_otherRequestsLogged(self) -> None:
        self.assertEqual(self.request("GET", f"/apps/{APP.id}/channels"), b"200")
        self.assertEqual(len(self.log.lines), 1)
        self.assertIn('"GET /apps/3/channels?', self.log.lines[0])

    def test_logPublishes(self) -> None:
        self.site.logPublishes = True
        self.assertEqual(self.publish(), b"200")
        self.assertEqual(len(self.log.lines), 1)
        self.assertIn('" 200 ', self.log.lines[0])
