"""The request class of the Site: bodies over the cap are dropped while they arrive."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyChannel

from pushsvc.site import MAX_REQUEST_BODY, PushRequest


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
