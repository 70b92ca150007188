"""
The HTTP channel's fast path for API publishes (L{pushsvc.http.channel}, L{pushsvc.api}): the
same request sent to a site whose channel may take it (C{publishAPI} set) and to one that takes
the full twisted.web path must give the same bytes, the same access log, the same recording
and counters; and the fast path must really be taken for a plain publish, and not for anything
unusual. On a Clock and in-memory transports, with the wrappers the service puts on.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

import pushsvc.hub
from pushsvc.api import PusherAPI
from pushsvc.apiauth import apiSignature, bodyMd5
from pushsvc.apps import App, Apps
from pushsvc.fanout.registry import Registry
from pushsvc.http.channel import MAX_PIPELINED, BoundedHTTPChannel, HTTPLimits, readPost
from pushsvc.http.site import PushSite, makeSite
from pushsvc.hub import Hub
from pushsvc.interfaces import BrokerUnavailable, PushSettings
from pushsvc.local import LocalBroker
from pushsvc.recording import Recorder, classifier
from pushsvc.recording.wrap import (
    RecordingBroker,
    RecordingRoot,
    instrumentRegistry,
    recordedCheck,
    recordedCommit,
)
from tests.helpers import KeptConn, captureLogs
from tests.test_httpchannel import FullTransport

NOW = 1_800_000_000
APP = App("7", "key7", "secret7", maxDataBytes=200)
LIMITED = App("8", "key8", "secret8", maxApiRequestsPerSecond=1)
OFF = App("9", "key9", "secret9", enabled=False)
GET = b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n"


def request(
    body: bytes,
    endpoint: str = "events",
    app: App = APP,
    query: dict[str, str] | None = None,
    headers: str = "Host: x\r\nContent-Type: application/json\r\n",
    ts: int = NOW,
    sign: bool = True,
    version: str = "HTTP/1.1",
) -> bytes:
    """A signed C{POST /apps/{id}/{endpoint}} (its Content-Length last, unless in C{headers})."""
    path = f"/apps/{app.id}/{endpoint}"
    params = dict(query or {}, auth_key=app.key, auth_timestamp=str(ts), auth_version="1.0")
    params["body_md5"] = bodyMd5(body)
    params["auth_signature"] = apiSignature(app.secret, "POST", path, params) if sign else "0"
    if "content-length" not in headers.lower():
        headers += f"Content-Length: {len(body)}\r\n"
    head = f"POST {path}?{urlencode(params)} {version}\r\n{headers}\r\n"
    return head.encode() + body


def event(channel: str = "news", data: str = "hello", **more: Any) -> bytes:
    return json.dumps({"name": "e", "channel": channel, "data": data, **more}).encode()


def batch(n: int = 3, **more: Any) -> bytes:
    items = [{"name": "e", "channel": "news", "data": f"d{i}", **more} for i in range(n)]
    return json.dumps({"batch": items}).encode()


def Conn(n: int) -> KeptConn:
    """A subscriber of APP whose outbound keeps what it is sent."""
    return KeptConn(n, APP.id)


class LogFile:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, data: str) -> None:
        self.lines.append(data)

    def close(self) -> None:
        pass


class Rig:
    """The site, API, hub and recorder as the service wires them; the fast path on or off."""

    def __init__(self, case: SynchronousTestCase, fast: bool, recording: bool = True) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.recorder = Recorder(self.clock)
        self.apps = Apps([APP, LIMITED, OFF])
        self.registry = Registry(PushSettings(), self.clock)
        broker: Any = LocalBroker(self.clock)
        if recording:
            instrumentRegistry(self.registry, self.recorder)
            broker = RecordingBroker(broker, self.recorder, "in-process")
        self.hub = Hub(self.registry, broker, self.clock)
        self.subscriber = Conn(1)
        self.hub.connect(self.subscriber)
        self.hub.subscribe(self.subscriber, "news")
        self.api = PusherAPI(self.apps, self.hub, self.clock.seconds)
        classify = classifier(self.apps)
        if recording:
            self.api.verify = recordedCheck(self.recorder, "signature", self.api.verify)
            self.api.commitPublish = recordedCommit(self.recorder, classify, self.api.commitPublish)
        pages = Path(case.mktemp())
        pages.mkdir()
        self.site: PushSite = makeSite(
            pages,
            Resource(),
            self.api,
            Resource(),
            Resource(),
            Resource(),
            Resource(),
            Resource(),
            HTTPLimits(10, 1024, 60),
            self.clock,
        )
        if recording:
            self.site.resource = RecordingRoot(self.site.resource, self.recorder, classify)
        self.site.publishAPI = self.api if fast else None
        self.site.startFactory()
        self.log = LogFile()
        self.site.logFile = self.log
        case.addCleanup(self.site.stopFactory)
        self.protocol = self.site.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.clock.advance(0.01)  # the fan-out is quiet: frames are written at once

    @property
    def channel(self) -> BoundedHTTPChannel:
        channel = self.protocol._channel
        assert isinstance(channel, BoundedHTTPChannel)
        return channel

    def send(self, data: bytes) -> bytes:
        """What the server writes back to C{data}, all of it."""
        self.protocol.dataReceived(data)
        reply: bytes = self.transport.value()
        self.transport.clear()
        return reply

    def records(self) -> list[dict[str, Any]]:
        out = []
        for record in reversed(list(self.recorder.recent(100))):
            seen = record.asJSON()
            del seen["id"]
            out.append(seen)
        return out

    def figures(self) -> dict[str, Any]:
        counters = self.api.appStats.of(APP.id)
        limited = self.api.appStats.of(LIMITED.id)
        return {
            "records": self.records(),
            "stats": self.recorder.stats(),
            "byApp": dict(self.recorder.requestsByApp),
            "fanOuts": dict(self.recorder.fanOutsByApp),
            "published": self.api.published,
            "counters": (counters.apiRequests, counters.published, counters.apiRateLimited),
            "limited": (limited.apiRequests, limited.published, limited.apiRateLimited),
            "delivered": list(self.subscriber.writes),
            "log": self.log.lines,
        }


def sameDate(reply: bytes) -> bytes:
    """C{reply} with its Date header made constant (the two rigs may straddle a second)."""
    return re.sub(rb"\r\nDate: [^\r]*\r\n", b"\r\nDate: -\r\n", reply)


class FastPathTests(SynchronousTestCase):
    def both(self, *requests: bytes) -> tuple[Rig, Rig, list[bytes]]:
        """Send each request to a fast and a full rig; assert the same replies and figures."""
        fast, full = Rig(self, True), Rig(self, False)
        replies = []
        for data in requests:
            answer = fast.send(data)
            self.assertEqual(sameDate(answer), sameDate(full.send(data)), data)
            replies.append(answer)
        self.assertEqual(fast.figures(), full.figures())
        self.assertEqual(full.channel.fastPublishes, 0)
        return fast, full, replies

    def test_publishTakesTheFastPath(self) -> None:
        """A plain publish is answered by the channel: delivered, 200 {}, counted."""
        fast, _, (reply,) = self.both(request(event()))
        self.assertEqual(fast.channel.fastPublishes, 1)
        self.assertTrue(reply.startswith(b"HTTP/1.1 200 OK\r\n"), reply)
        self.assertTrue(reply.endswith(b"\r\n\r\n2\r\n{}\r\n0\r\n\r\n"), reply)
        self.assertEqual(len(fast.subscriber.writes), 1)
        self.assertIn(b'"data":"hello"', fast.subscriber.writes[0])
        self.assertEqual(fast.api.published, 1)

    def test_withoutRecording(self) -> None:
        """--no-recording: the fast path is taken, with the same reply as the full path's."""
        fast, full = Rig(self, True, recording=False), Rig(self, False, recording=False)
        for data in (request(event()), request(event(), sign=False)):
            self.assertEqual(sameDate(fast.send(data)), sameDate(full.send(data)))
        self.assertEqual(fast.channel.fastPublishes, 2)
        self.assertEqual(fast.figures(), full.figures())
        self.assertEqual(fast.recorder.recorded, 0)

    def test_sameRecording(self) -> None:
        """The request, its calls (signature, broker, fan-out) and the aggregates: the same."""
        fast, _, _ = self.both(request(event()), request(event(data="again")))
        self.assertEqual(fast.channel.fastPublishes, 2)
        (first, _) = fast.records()
        self.assertEqual(
            (first["method"], first["path"], first["endpoint"], first["app_id"], first["status"]),
            ("POST", "/apps/7/events", "/apps/{app}/events", "7", 200),
        )
        self.assertEqual(
            [(c["kind"], c["name"]) for c in first["calls"]],
            [("auth", "signature"), ("broker", "publish"), ("fanout", "deliver")],
        )

    def test_batchTakesTheFastPath(self) -> None:
        """A batch is published in order through the fast path, each event counted."""
        fast, _, (reply,) = self.both(request(batch(3), "batch_events"))
        self.assertEqual(fast.channel.fastPublishes, 1)
        self.assertEqual(fast.api.published, 3)
        fast.clock.advance(0)  # the second and third were queued behind the first
        written = b"".join(fast.subscriber.writes)
        self.assertEqual(
            [written.find(b'"data":"d%d"' % i) for i in range(3)],
            sorted(written.find(b'"data":"d%d"' % i) for i in range(3)),
        )
        self.assertNotIn(-1, [written.find(b'"data":"d%d"' % i) for i in range(3)])
        self.assertTrue(reply.startswith(b"HTTP/1.1 200 OK\r\n"), reply)

    def test_keepAliveAndOtherHeaders(self) -> None:
        """Connection: keep-alive, extra headers, another header order: still fast."""
        headers = (
            "Content-Length: {n}\r\nhost: x\r\nConnection: Keep-Alive\r\nX-Pusher-Library: p\r\n"
        )
        body = event()
        fast, _, _ = self.both(request(body, headers=headers.format(n=len(body))))
        self.assertEqual(fast.channel.fastPublishes, 1)

    def test_pipelinedKeepOrder(self) -> None:
        """Two publishes and a GET in one write: answered in order, the publishes fast."""
        data = request(event(data="one")) + request(event(data="two")) + GET
        fast, _, (reply,) = self.both(data)
        self.assertEqual(re.findall(rb"HTTP/1\.1 (\d{3}) ", reply), [b"200", b"200", b"404"])
        self.assertEqual(fast.channel.fastPublishes, 2)
        fast.clock.advance(0)  # the second frame was queued behind the first
        written = b"".join(fast.subscriber.writes)
        self.assertLess(written.index(b'"data":"one"'), written.index(b'"data":"two"'))

    def test_getThenPublishPipelined(self) -> None:
        """A publish behind another request keeps its place (it takes the full path then)."""
        data = GET + request(event(data="one")) + request(event(data="two"))
        _, _, (reply,) = self.both(data)
        self.assertEqual(re.findall(rb"HTTP/1\.1 (\d{3}) ", reply), [b"404", b"200", b"200"])

    def test_splitRequestIsAnswered(self) -> None:
        """A publish that arrives in pieces is answered once whole (by either path)."""
        data = request(event())
        fast, full = Rig(self, True), Rig(self, False)
        for rig in (fast, full):
            self.assertEqual(rig.send(data[:50]), b"")
            self.assertEqual(rig.send(data[50:-5]), b"")
        self.assertEqual(sameDate(fast.send(data[-5:])), sameDate(full.send(data[-5:])))
        self.assertEqual(fast.figures(), full.figures())

    def test_afterFastTheIdleDeadline(self) -> None:
        """After a fast publish the connection has the idle deadline, as after any request."""
        fast = Rig(self, True)
        fast.send(request(event()))
        self.assertEqual(fast.channel._phase, "idle")
        fast.clock.advance(60)
        self.assertTrue(fast.transport.disconnecting)

    def test_overTheRateLimit(self) -> None:
        """The first fits the app's rate and is fast; the second gets today's 429."""
        fast, _, replies = self.both(
            request(event(), app=LIMITED), request(event(data="2"), app=LIMITED)
        )
        self.assertEqual(fast.channel.fastPublishes, 1)
        self.assertTrue(replies[1].startswith(b"HTTP/1.1 429 "), replies[1])
        self.assertIn(b"Retry-After: 1\r\n", replies[1])


# Requests the fast path leaves to twisted.web: (what, request, status expected).
deep = b'{"name":"e","channel":"news","data":"x","z":' + b"[" * 40 + b"]" * 40 + b"}"
UNUSUAL: list[tuple[str, bytes, int]] = [
    ("bad signature", request(event(), sign=False), 401),
    ("old timestamp", request(event(), ts=NOW - 700), 401),
    ("body_md5 mismatch", request(event()).replace(b'"hello"', b'"jello"'), 401),
    ("unknown app", request(event(), app=App("99", "k", "s")), 404),
    ("disabled app", request(event(), app=OFF), 403),
    ("not JSON", request(b"{nope"), 400),
    ("too deep", request(deep), 400),
    ("data too large", request(event(data="x" * 300)), 413),
    ("bad channel", request(event(channel="no spaces")), 400),
    (
        "reserved event",
        request(json.dumps({"name": "pusher:x", "channel": "a", "data": ""}).encode()),
        400,
    ),
    ("unknown parameter", request(event(), query={"extra": "1"}), 400),
    ("escaped query", request(event(), query={"info": "user count"}), 400),
    ("info asked", request(event(info="subscription_count")), 200),
    ("batch too long", request(batch(11), "batch_events"), 400),
    ("bad batch item", request(batch(2, channel="no spaces"), "batch_events"), 400),
    ("wrong endpoint", request(event(), "channels"), 405),
    ("HTTP/1.0", request(event(), version="HTTP/1.0"), 200),
    (
        "Connection: close",
        request(event(), headers="Host: x\r\nConnection: close\r\n"),
        200,
    ),
    (
        "Expect",
        request(event(), headers="Host: x\r\nExpect: 100-continue\r\n"),
        200,
    ),
    (
        "chunked",
        b"POST "
        + request(event()).split(b" ", 2)[1]
        + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n" % len(event())
        + event()
        + b"\r\n0\r\n\r\n",
        200,
    ),
    (
        "two Content-Lengths",
        request(
            event(), headers=f"Content-Length: {len(event())}\r\nContent-Length: {len(event())}\r\n"
        ),
        400,
    ),
    ("folded header", request(event(), headers="Host: x\r\nX-A: a\r\n b\r\n"), 200),
    ("body too large", request(b"{" + b" " * 70000 + b"}"), 413),
]


# The signature is checked once, when the fast path commits (recorded, as the full path does):
# these it answers itself, as twisted.web would.
SIGNATURE_ERRORS = {"bad signature", "old timestamp", "body_md5 mismatch"}


class FallbackTests(SynchronousTestCase):
    def test_unusualRequestsAnsweredAsToday(self) -> None:
        """
        Each error, and each unusual publish, gets the full path's reply, log and record: from
        twisted.web, but for a bad signature, which the fast path answers the same way.
        """
        for what, data, status in UNUSUAL:
            fast, full = Rig(self, True), Rig(self, False)
            reply = fast.send(data)
            self.assertEqual(sameDate(reply), sameDate(full.send(data)), what)
            statuses = re.findall(rb"HTTP/1\.[01] (\d{3}) ", reply)
            self.assertEqual(statuses[-1:], [b"%d" % status], (what, reply[:200]))
            self.assertEqual(fast.figures(), full.figures(), what)
            self.assertEqual(fast.channel.fastPublishes, int(what in SIGNATURE_ERRORS), what)
            if status >= 400 and what != "two Content-Lengths":  # that one: a bare 400, no log
                self.assertEqual(len(fast.log.lines), 1, what)

    def test_readPostIsStrict(self) -> None:
        """readPost takes the plainest form only."""
        body = event()
        self.assertIsNotNone(readPost(request(body)))
        self.assertIsNone(readPost(request(body)[:-1]))  # body incomplete
        self.assertIsNone(readPost(request(body).replace(b"POST", b"PUT", 1)))
        self.assertIsNone(readPost(request(body).replace(b"Host: x", b"Host: \xff")))
        self.assertIsNone(readPost(request(body).replace(b"\r\nHost", b"\nHost")))

    def test_noFastPathWhenPublishesAreLogged(self) -> None:
        """--log-publishes: twisted.web writes the access-log line of each publish."""
        fast = Rig(self, True)
        fast.site.logPublishes = True
        fast.send(request(event()))
        self.assertEqual(fast.channel.fastPublishes, 0)
        self.assertEqual(len(fast.log.lines), 1)


class LaterBroker:
    """A hub whose publishes are taken when the test says, or fail."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.pending: list[Deferred[None]] = []
        self.fail = False

    def publish(self, *args: Any) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.pending.append(d)
        return d

    def release(self) -> None:
        pending, self.pending = self.pending, []
        for d in pending:
            if self.fail:
                d.errback(BrokerUnavailable("down"))
            else:
                d.callback(None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.hub, name)


class LaterTests(SynchronousTestCase):
    def rigs(self) -> tuple[Rig, Rig, LaterBroker, LaterBroker]:
        fast, full = Rig(self, True), Rig(self, False)
        laters = []
        for rig in (fast, full):
            later = LaterBroker(rig.hub)
            rig.api.hub = later  # type: ignore[assignment]
            laters.append(later)
        return fast, full, laters[0], laters[1]

    def test_answerWaitsForTheBroker(self) -> None:
        """A publish the broker takes later: replies wait, in order, then the same bytes."""
        fast, full, fastLater, fullLater = self.rigs()
        data = request(batch(2), "batch_events") + GET
        for rig, later in ((fast, fastLater), (full, fullLater)):
            self.assertEqual(rig.send(data), b"")
            self.assertEqual(len(later.pending), 1)
            later.release()  # the first event taken: the second is published
            self.assertEqual(rig.send(b""), b"")
            later.release()
        replies = [fast.transport.value(), full.transport.value()]
        self.assertEqual(sameDate(replies[0]), sameDate(replies[1]))
        self.assertEqual(re.findall(rb"HTTP/1\.1 (\d{3}) ", replies[0]), [b"200", b"404"])
        self.assertEqual(fast.channel.fastPublishes, 1)
        self.assertEqual(fast.figures(), full.figures())

    def test_brokerDownSameAnswerAndLog(self) -> None:
        """The broker fails: the fast path answers 503 and logs it as twisted.web does."""
        fast, full, fastLater, fullLater = self.rigs()
        logs = captureLogs(self)
        for rig, later in ((fast, fastLater), (full, fullLater)):
            later.fail = True
            rig.send(request(event()))
            later.release()
        replies = [fast.transport.value(), full.transport.value()]
        self.assertTrue(replies[0].startswith(b"HTTP/1.1 503 "), replies[0])
        self.assertEqual(sameDate(replies[0]), sameDate(replies[1]))
        self.assertEqual(fast.channel.fastPublishes, 1)
        self.assertEqual(fast.figures(), full.figures())
        self.assertEqual(len(fast.log.lines), 1)
        self.assertFalse([e for e in logs if e.get("log_failure") is not None])

    def test_unexpectedFailureIsALogged500(self) -> None:
        """Anything else the broker fails with: a 500 and the same logged failure."""
        fast, full, fastLater, fullLater = self.rigs()
        logs = captureLogs(self)
        for rig, later in ((fast, fastLater), (full, fullLater)):
            rig.send(request(event()))
            later.pending.pop().errback(RuntimeError("boom"))
        replies = [fast.transport.value(), full.transport.value()]
        self.assertTrue(replies[0].startswith(b"HTTP/1.1 500 "), replies[0])
        self.assertEqual(sameDate(replies[0]), sameDate(replies[1]))
        failures = [e for e in logs if e.get("log_failure") is not None]
        self.assertEqual(len(failures), 2)
        self.assertEqual(
            [(e["log_namespace"], e["log_format"], e["uri"]) for e in failures][0],
            [(e["log_namespace"], e["log_format"], e["uri"]) for e in failures][1],
        )
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(fast.figures(), full.figures())


class CountingTransport(StringTransport):
    """A transport that counts how often its local address is asked."""

    hostAsked = 0

    def getHost(self) -> Any:
        self.hostAsked += 1
        return IPv4Address("TCP", "127.0.0.1", 8080)


class FullPathTests(SynchronousTestCase):
    def test_hostAskedOncePerConnection(self) -> None:
        """twisted.web asks each request's local address: the socket is asked once (getsockname)."""
        rig = Rig(self, False)
        transport = CountingTransport()
        protocol = rig.site.buildProtocol(None)
        protocol.makeConnection(transport)
        protocol.dataReceived(GET + GET + request(event()))
        self.assertEqual(
            re.findall(rb"HTTP/1\.1 (\d{3}) ", transport.value()), [b"404"] * 2 + [b"200"]
        )
        self.assertEqual(transport.hostAsked, 1)


class BoundsTests(SynchronousTestCase):
    """The channel's bounds hold for publishes the fast path answers, as for any request."""

    def test_onlyFewAnsweredPerRead(self) -> None:
        """Of 10 publishes pipelined in one read, MAX_PIPELINED are answered, then the rest."""
        rig = Rig(self, True)
        rig.protocol.dataReceived(b"".join(request(event(data=f"{i}")) for i in range(10)))
        self.assertEqual(len(re.findall(rb"HTTP/1\.1 200 ", rig.transport.value())), MAX_PIPELINED)
        self.assertEqual(rig.transport.producerState, "paused")
        rig.clock.advance(0)
        self.assertEqual(len(re.findall(rb"HTTP/1\.1 200 ", rig.transport.value())), 10)
        self.assertEqual(rig.transport.producerState, "producing")
        self.assertEqual(rig.channel.fastPublishes, 10)

    def test_stopsReadingWhenRepliesAreNotTaken(self) -> None:
        """
        A client that pipelines publishes and never reads: once the transport is full nothing
        more is parsed or read; draining resumes it, and every publish is answered in order.
        """
        rig = Rig(self, True)
        transport = FullTransport()
        protocol = rig.site.buildProtocol(None)
        protocol.makeConnection(transport)
        protocol.dataReceived(b"".join(request(event(data=f"{i}")) for i in range(100)))
        for _ in range(1000):
            rig.clock.advance(0)
        unsent = transport.value()
        answered = len(re.findall(rb"HTTP/1\.1 200 ", unsent))
        self.assertTrue(transport.full)
        self.assertEqual(transport.producerState, "paused")
        self.assertLess(answered, 100)
        self.assertLessEqual(len(unsent), transport.bufferSize + len(unsent) // answered)
        total = 0
        for _ in range(100):
            total += len(re.findall(rb"HTTP/1\.1 200 ", transport.drain()))
            rig.clock.advance(0)
            if total == 100:
                break
        self.assertEqual(total, 100)
        self.assertEqual(rig.api.published, 100)
        self.assertEqual(transport.producerState, "producing")


class EnvelopeTests(SynchronousTestCase):
    """The hub does not decode the envelope the in-process broker hands straight back."""

    def setUp(self) -> None:
        self.rig = Rig(self, True)
        self.loads: list[bytes] = []

        def loads(data: bytes) -> Any:
            self.loads.append(data)
            return json.loads(data)

        self.patch(pushsvc.hub, "json", SimpleNamespace(loads=loads, dumps=json.dumps))

    def test_publishedNotDecodedAgain(self) -> None:
        """A publish through the in-process broker is delivered without a json.loads."""
        self.rig.hub.publish(APP, ["news"], "e", "fresh")
        self.assertEqual(self.loads, [])
        self.assertIn(b'"data":"fresh"', b"".join(self.rig.subscriber.writes))

    def test_otherEnvelopesDecoded(self) -> None:
        """An envelope from elsewhere (Redis: other bytes, even if equal) is decoded."""
        envelope = pushsvc.hub.encodeEnvelope("e", APP.id, "news", "e", "remote")
        copy = bytes(bytearray(envelope))
        self.rig.hub.receive(copy)
        self.assertEqual(self.loads, [copy])
        self.assertIn(b'"data":"remote"', b"".join(self.rig.subscriber.writes))
