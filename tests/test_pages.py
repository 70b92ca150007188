"""
The static pages (L{pushsvc.http.site.Pages}) on a real loopback port: at most one range, ETag and
Cache-Control, no file left open.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.test.requesthelper import DummyRequest

from pushsvc.http.site import Pages, makeSite
from tests.helpers import asRequest, listenLocal, sevenResources

SCRIPT = bytes(range(256)) * 12  # 3,072 bytes, every byte value


class _Fetch(Protocol):
    """Sends one request and collects the whole reply, until the server closes."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.data = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)  # type: ignore[union-attr]  # connected: transport is set

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done.callback(self.data)


class Reply:
    def __init__(self, raw: bytes) -> None:
        head, self.body = raw.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        self.status = int(lines[0].split(b" ")[1])
        self.headers = {}
        for line in lines[1:]:
            name, value = line.split(b":", 1)
            self.headers[name.strip().lower()] = value.strip()


def openFds() -> set[tuple[str, str]]:
    """This process's open file descriptors, with what each is open on."""
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds.add((fd, os.readlink(f"/proc/self/fd/{fd}")))
        except FileNotFoundError:
            pass  # the one listdir itself used
    return fds


class PagesTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.pages = Path(self.mktemp())
        self.pages.mkdir()
        (self.pages / "app.js").write_bytes(SCRIPT)
        (self.pages / "index.html").write_text("<p>hi</p>")
        self.site = makeSite(self.pages, *sevenResources(), clock=reactor)
        self.site.logFile = _Sink()
        self.port: Any = listenLocal(self.site)
        self.addCleanup(self.port.stopListening)

    @inlineCallbacks
    def get(self, path: str = "/app.js", method: str = "GET", **headers: str) -> Any:
        """Fires with the L{Reply} to one request on its own connection."""
        lines = [f"{method} {path} HTTP/1.1", "Host: x", "Connection: close"]
        lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
        fetch = _Fetch(("\r\n".join(lines) + "\r\n\r\n").encode())
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        yield connectProtocol(endpoint, fetch)
        raw = yield fetch.done.addTimeout(10, reactor)
        yield self.site.closeConnections().addTimeout(10, reactor)  # the server's side is gone
        return Reply(raw)

    @inlineCallbacks
    def test_whole(self) -> Any:
        """A plain GET: the file, ETag, Cache-Control: no-cache."""
        reply = yield self.get()
        self.assertEqual(reply.status, 200)
        self.assertEqual(reply.body, SCRIPT)
        self.assertEqual(reply.headers[b"cache-control"], b"no-cache")
        self.assertRegex(reply.headers[b"etag"], rb'^"[0-9a-f]+-[0-9a-f]+"$')

    @inlineCallbacks
    def test_indexHasTheHeadersToo(self) -> Any:
        reply = yield self.get("/")
        self.assertEqual(reply.body, b"<p>hi</p>")
        self.assertEqual(reply.headers[b"cache-control"], b"no-cache")
        self.assertIn(b"etag", reply.headers)

    @inlineCallbacks
    def test_hundredRangesGetTheFileOnce(self) -> Any:
        """100 ranges (each the whole file): 200 and the file once, not 100 times."""
        reply = yield self.get(Range="bytes=" + ",".join(["0-"] * 100))
        self.assertEqual(reply.status, 200)
        self.assertEqual(reply.body, SCRIPT)
        self.assertEqual(int(reply.headers[b"content-length"]), len(SCRIPT))

    @inlineCallbacks
    def test_manyRangesCompleteAndNoFdLeft(self) -> Any:
        """
        1,500 ranges get a complete reply (the whole file, once), and no file descriptor of
        this process is left open afterwards.
        """
        yield self.get()  # the reactor's own (its waker) are open from here on
        before = openFds()
        for _ in range(3):
            reply = yield self.get(Range="bytes=" + ",".join(["0-1"] * 1500))
            self.assertEqual((reply.status, reply.body), (200, SCRIPT))
        self.assertEqual(openFds() - before, set())

    @inlineCallbacks
    def test_abandonedReplyLeavesNoFd(self) -> Any:
        """
        A client that goes away in the middle of a large file (read from the server's file as
        it is sent) leaves no open file behind.
        """
        (self.pages / "big.bin").write_bytes(b"z" * (8 * 1024 * 1024))
        yield self.get()
        before = openFds()
        fetch = _Fetch(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        started: Deferred[None] = Deferred()
        received = fetch.dataReceived

        def dataReceived(data: bytes) -> None:
            received(data)
            if not started.called:
                fetch.transport.pauseProducing()  # type: ignore[union-attr]  # connected: transport is set
                started.callback(None)

        fetch.dataReceived = dataReceived  # type: ignore[method-assign]  # replaced for this test
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        yield connectProtocol(endpoint, fetch)
        yield started.addTimeout(10, reactor)
        self.assertTrue(
            any(target.endswith("big.bin") for _, target in openFds() - before)
        )  # being sent
        fetch.transport.abortConnection()  # type: ignore[union-attr]  # connected: transport is set
        yield fetch.done
        yield self.site.closeConnections().addTimeout(10, reactor)
        self.assertEqual(openFds() - before, set())

    @inlineCallbacks
    def test_oneRange(self) -> Any:
        """A single range is served: 206 with its Content-Range."""
        reply = yield self.get(Range="bytes=10-19")
        self.assertEqual(reply.status, 206)
        self.assertEqual(reply.body, SCRIPT[10:20])
        self.assertEqual(reply.headers[b"content-range"], b"bytes 10-19/%d" % len(SCRIPT))

    @inlineCallbacks
    def test_rangeNotSatisfiable(self) -> Any:
        reply = yield self.get(Range="bytes=5000-")
        self.assertEqual(reply.status, 416)

    @inlineCallbacks
    def test_malformedRangeIgnored(self) -> Any:
        reply = yield self.get(Range="bytes=x-y")
        self.assertEqual((reply.status, reply.body), (200, SCRIPT))

    @inlineCallbacks
    def test_notModified(self) -> Any:
        """If-None-Match with the ETag (alone, in a list, or weak) gets a 304 with no body."""
        etag = (yield self.get()).headers[b"etag"].decode()
        for value in (etag, f'"other", {etag}', f"W/{etag}", "*"):
            reply = yield self.get(If_None_Match=value)
            self.assertEqual((reply.status, reply.body), (304, b""), value)
            self.assertEqual(reply.headers[b"etag"].decode(), etag)

    @inlineCallbacks
    def test_changedFileIsSent(self) -> Any:
        """
        After a deploy changes the file, the old ETag no longer matches: the new file is sent,
        even when If-Modified-Since would say it had not changed.
        """
        etag = (yield self.get()).headers[b"etag"].decode()
        (self.pages / "app.js").write_bytes(SCRIPT[::-1])
        os.utime(self.pages / "app.js", ns=(1, 1))
        reply = yield self.get(
            If_None_Match=etag, If_Modified_Since="Fri, 01 Jan 2100 00:00:00 GMT"
        )
        self.assertEqual((reply.status, reply.body), (200, SCRIPT[::-1]))
        self.assertNotEqual(reply.headers[b"etag"].decode(), etag)

    @inlineCallbacks
    def test_ifRange(self) -> Any:
        """If-Range with the current ETag gets the range; with another, the whole file."""
        etag = (yield self.get()).headers[b"etag"].decode()
        reply = yield self.get(Range="bytes=0-9", If_Range=etag)
        self.assertEqual((reply.status, reply.body), (206, SCRIPT[:10]))
        reply = yield self.get(Range="bytes=0-9", If_Range='"old"')
        self.assertEqual((reply.status, reply.body), (200, SCRIPT))

    @inlineCallbacks
    def test_head(self) -> Any:
        reply = yield self.get(method="HEAD")
        self.assertEqual((reply.status, reply.body), (200, b""))
        self.assertIn(b"etag", reply.headers)

    def test_noDeprecationWarningsAtImport(self) -> None:
        """Importing the site (and so twisted.web.static) warns about nothing."""
        root = Path(__file__).resolve().parent.parent
        result = subprocess.run(
            [sys.executable, "-W", "error::DeprecationWarning", "-c", "import pushsvc.http.site"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.assertEqual((result.returncode, result.stderr), (0, ""))


class _Sink:
    def write(self, data: str) -> None:
        pass

    def close(self) -> None:
        pass


class ForbiddenTests(SynchronousTestCase):
    def test_forbiddenIsJSON(self) -> None:
        """A file that cannot be read gets a JSON 403, not twisted.web's HTML page."""
        request = DummyRequest([b"app.js"])
        body = Pages.forbidden.render(asRequest(request))
        self.assertEqual(request.responseCode, 403)
        self.assertEqual(json.loads(body), {"error": "This file cannot be read."})
