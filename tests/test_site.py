"""The request class of the Site: bodies over the cap are dropped while they arrive."""

from __future__ import annotations

from io import BytesIO

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyChannel, DummyRequest

from pushsvc.httputil import HTTPError, formArgs, queryArg
from pushsvc.site import MAX_REQUEST_BODY, PushRequest, PushSite


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
        request.content = BytesIO(body)
        return request

    def test_urlencodedBody(self) -> None:
        """pusher-js's auth body (x-www-form-urlencoded) joins the query arguments."""
        request = self.request(b"socket_id=1.2&channel_name=presence-room-x",
                               b"application/x-www-form-urlencoded; charset=UTF-8")
        args = formArgs(request)
        self.assertEqual(queryArg(request, "socket_id", args), "1.2")
        self.assertEqual(queryArg(request, "channel_name", args), "presence-room-x")
        self.assertEqual(queryArg(request, "q", args), "1")

    def test_otherBodyIgnored(self) -> None:
        request = self.request(b"socket_id=1.2", b"text/plain")
        self.assertIsNone(queryArg(request, "socket_id", formArgs(request)))

    def test_bodyOverLimit(self) -> None:
        request = self.request(b"a=" + b"x" * 5000, b"application/x-www-form-urlencoded")
        with self.assertRaises(HTTPError) as e:
            formArgs(request, 4096)
        self.assertEqual(e.exception.status, 413)

    def test_siteDoesNotParseForms(self) -> None:
        """PushSite hands form bodies to the resource untouched (no email-package parsing)."""
        from twisted.web.resource import Resource

        self.assertFalse(PushSite(Resource())._parsePOSTFormSubmission)
