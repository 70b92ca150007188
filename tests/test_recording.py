"""
The recording part of the inside view (L{pushsvc.recording}) and the admin site's JSON API, in
process: StubTreq, a fixed clock, fake subscribers, no sockets.
"""

from __future__ import annotations

import json
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from zope.interface.verify import verifyObject

from pushsvc.admin.metrics import Metrics, MetricsResource, perAppFigures
from pushsvc.admin.site import Figures, loopbackOnly, makeAdminSite
from pushsvc.api import makeApiResource
from pushsvc.apiauth import apiSignature, bodyMd5
from pushsvc.apps import App, Apps
from pushsvc.fanout.registry import Registry
from pushsvc.hub import Hub
from pushsvc.interfaces import IBroker, PushSettings
from pushsvc.local import LocalBroker
from pushsvc.recording import Recorder, classifier
from pushsvc.recording.recorder import MAX_CALLS
from pushsvc.recording.wrap import (
    RecordingBroker,
    RecordingRoot,
    RecordingStore,
    instrumentRegistry,
    recordedCheck,
)
from pushsvc.store import IStore
from pushsvc.store.memory import MemoryStore
from tests.helpers import KeptConn, stubTreq

APP = App("1001", "key1", "secret1")


def Conn(n: int) -> KeptConn:
    """A subscriber of APP whose outbound keeps what it is sent."""
    return KeptConn(n, APP.id)


def signedQuery(method: str, path: str, body: bytes, now: int) -> str:
    params = {
        "auth_key": APP.key,
        "auth_timestamp": str(now),
        "auth_version": "1.0",
        "body_md5": bodyMd5(body),
    }
    params["auth_signature"] = apiSignature(APP.secret, method, path, params)
    return "&".join(f"{k}={v}" for k, v in params.items())


class Stack:
    """A hub, registry and HTTP API wrapped for recording the way the service wraps them."""

    def __init__(self, subscribers: int = 0, size: int = 1000) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.recorder = Recorder(self.clock, size)
        self.apps = Apps([APP])
        self.registry = Registry(PushSettings(), self.clock)
        instrumentRegistry(self.registry, self.recorder)
        self.broker = RecordingBroker(LocalBroker(self.clock), self.recorder, "in-process")
        self.hub = Hub(self.registry, self.broker, self.clock)
        self.conns = [Conn(i) for i in range(subscribers)]
        for c in self.conns:
            self.hub.connect(c)
            self.hub.subscribe(c, "news")
        api = makeApiResource(self.apps, self.hub, self.clock.seconds)
        api.verify = recordedCheck(self.recorder, "signature", api.verify)
        tree = Resource()
        tree.putChild(b"apps", api)
        self.root = RecordingRoot(tree, self.recorder, classifier(self.apps))
        self.http = stubTreq(self.root)
        self.figures = Figures(
            self.clock, self.registry, lambda: perAppFigures(self.registry, [APP.id]), self.recorder
        )
        self.metrics = Metrics(lambda: [], lambda: perAppFigures(self.registry), self.recorder)
        self.admin, self.streams = makeAdminSite(
            self.recorder, self.figures, MetricsResource(self.metrics), Resource(), None, self.clock
        )
        self.adminHttp = stubTreq(self.admin.resource)

    def publish(self, case: SynchronousTestCase, channel: str = "news") -> Any:
        body = json.dumps({"name": "greet", "channel": channel, "data": '{"hi":1}'}).encode()
        path = f"/apps/{APP.id}/events"
        query = signedQuery("POST", path, body, int(self.clock.seconds()))
        response = case.successResultOf(
            self.http.post(
                f"http://admin.test{path}?{query}",
                data=body,
                headers={"content-type": ["application/json"]},
            )
        )
        case.assertEqual(response.code, 200, case.successResultOf(response.text()))
        return response

    def adminJSON(self, case: SynchronousTestCase, path: str, code: int = 200) -> Any:
        response = case.successResultOf(self.adminHttp.get(f"http://admin.test{path}"))
        case.assertEqual(response.code, code)
        return case.successResultOf(response.json())


class RecordedPublishTests(SynchronousTestCase):
    def test_fanOutOfAThousand(self) -> None:
        """
        A publish to a channel with 1,000 subscribers is recorded with its signature check,
        its broker publish and one fan-out call that says 1,000 subscribers and their bytes; every
        subscriber got the frame.
        """
        stack = Stack(subscribers=1000)
        stack.publish(self)
        stack.clock.advance(0)  # the queued part of the fan-out is written
        self.assertTrue(all(len(c.writes) == 1 for c in stack.conns))
        [record] = stack.adminJSON(self, "/api/requests?limit=5")
        self.assertEqual(record["method"], "POST")
        self.assertEqual(record["path"], f"/apps/{APP.id}/events")
        self.assertEqual(record["endpoint"], "/apps/{app}/events")
        self.assertEqual(record["app_id"], APP.id)
        self.assertEqual(record["status"], 200)
        kinds = [(c["kind"], c["name"]) for c in record["calls"]]
        self.assertEqual(
            kinds, [("auth", "signature"), ("broker", "publish"), ("fanout", "deliver")]
        )
        fanOut = record["calls"][2]["detail"]
        self.assertEqual(fanOut["subscribers"], 1000)
        frame = len(stack.conns[0].writes[0])
        self.assertEqual(fanOut["bytes"], 1000 * frame)
        self.assertFalse(fanOut["queued"])  # a quiet registry, under SYNC_LIMIT: written at once
        for call in record["calls"]:
            self.assertIn("duration_ms", call)
            self.assertIn("start_ms", call)
        self.assertEqual(stack.adminJSON(self, f"/api/requests/{record['id']}"), record)

    def test_fanOutIsOneCallPerPublish(self) -> None:
        """
        Recording wraps deliver once: the per-subscriber loop adds no call, whatever the count; a
        publish right after another is queued (the registry was not quiet), and says so.
        """
        stack = Stack(subscribers=300)
        stack.publish(self)
        stack.publish(self)
        self.assertEqual(stack.recorder.callKinds["fanout"].count, 2)
        self.assertEqual(stack.recorder.fanOutsByApp[APP.id], [2, 600])
        second, first = stack.recorder.recent(2)
        self.assertEqual(
            [c.detail["queued"] for r in (first, second) for c in r.calls if c.kind == "fanout"],
            [False, True],
        )

    def test_badSignatureIsAnErrorCall(self) -> None:
        """A publish with a wrong signature: 401, its signature call marked as an error."""
        stack = Stack()
        body = b'{"name":"e","channel":"news","data":"x"}'
        path = f"/apps/{APP.id}/events"
        query = signedQuery("POST", path, body, int(stack.clock.seconds())).replace(
            "auth_signature=", "auth_signature=0"
        )
        response = self.successResultOf(
            stack.http.post(
                f"http://admin.test{path}?{query}",
                data=body,
                headers={"content-type": ["application/json"]},
            )
        )
        self.assertEqual(response.code, 401)
        [record] = stack.adminJSON(self, "/api/requests")
        self.assertEqual(record["status"], 401)
        [call] = record["calls"]
        self.assertEqual((call["kind"], call["error"]), ("auth", True))

    def test_consoleSeesPublishAndSubscriptions(self) -> None:
        """The debug console gets the connection, the subscription and the event (data cut)."""
        stack = Stack(subscribers=1)
        seen: list[tuple[str, str, dict[str, Any]]] = []
        stack.recorder.consoleListeners.add(lambda app, at, kind, f: seen.append((app, kind, f)))
        body = json.dumps({"name": "big", "channel": "news", "data": "x" * 5000}).encode()
        path = f"/apps/{APP.id}/events"
        query = signedQuery("POST", path, body, int(stack.clock.seconds()))
        self.successResultOf(
            stack.http.post(
                f"http://admin.test{path}?{query}",
                data=body,
                headers={"content-type": ["application/json"]},
            )
        )
        backlog = [kind for _, _, kind, _ in stack.recorder.consoleItems()]
        self.assertEqual(backlog[:2], ["connection", "subscribed"])
        [(app, kind, fields)] = seen
        self.assertEqual(
            (app, kind, fields["channel"], fields["event"]), (APP.id, "api_message", "news", "big")
        )
        self.assertLessEqual(len(fields["data"]), 201)


class RecorderTests(SynchronousTestCase):
    def test_ringIsBounded(self) -> None:
        """The ring keeps the last N requests; an older one is no longer found by id."""
        clock = Clock()
        recorder = Recorder(clock, size=3)
        records = [recorder.begin("GET", f"/{i}", "static", None) for i in range(5)]
        for r in records:
            recorder.end(r, 200)
        self.assertEqual([r.path for r in recorder.recent(10)], ["/4", "/3", "/2"])
        self.assertIsNone(recorder.get(records[0].id))
        self.assertIs(recorder.get(records[4].id), records[4])
        self.assertEqual(recorder.endpoints["static"].count, 5)

    def test_callsPerRequestAreBounded(self) -> None:
        """A request keeps at most MAX_CALLS calls and counts the rest."""
        recorder = Recorder(Clock())
        record = recorder.begin("GET", "/", "static", None)
        token = recorder.enter(record)
        try:
            for _ in range(MAX_CALLS + 5):
                call = recorder.start("store", "q")
                assert call is not None
                recorder.finish(call, 0.0)
        finally:
            recorder.leave(token)
        self.assertEqual((len(record.calls), record.droppedCalls), (MAX_CALLS, 5))

    def test_callOutsideARequest(self) -> None:
        """A call made outside any request is counted in its kind, and kept nowhere."""
        recorder = Recorder(Clock())
        call = recorder.start("broker", "subscribe")
        assert call is not None
        recorder.finish(call, 0.0)
        self.assertEqual(recorder.callKinds["broker"].count, 1)
        self.assertEqual(list(recorder.ring), [])

    def test_quantiles(self) -> None:
        """Per endpoint: count, errors (5xx), mean and p50/p95/p99 of the durations."""
        clock = Clock()
        recorder = Recorder(clock)
        for i in range(1, 101):
            r = recorder.begin("GET", "/x", "/x", None)
            clock.advance(i / 1000)
            recorder.end(r, 500 if i == 100 else 200)
        stats = recorder.stats()["endpoints"]["/x"]
        self.assertEqual((stats["count"], stats["errors"]), (100, 1))
        self.assertAlmostEqual(stats["mean_ms"], 50.5, places=2)
        self.assertAlmostEqual(stats["p50_ms"], 51, places=2)
        self.assertAlmostEqual(stats["p95_ms"], 96, places=2)
        self.assertAlmostEqual(stats["p99_ms"], 100, places=2)


class SeamTests(SynchronousTestCase):
    def test_recordingStoreAndBrokerKeepTheirInterfaces(self) -> None:
        """The recording wrappers still provide IStore and IBroker."""
        recorder = Recorder(Clock())
        self.assertTrue(verifyObject(IStore, RecordingStore(MemoryStore(), recorder)))
        self.assertTrue(verifyObject(IBroker, RecordingBroker(LocalBroker(Clock()), recorder, "x")))

    def test_storeCallsWithRows(self) -> None:
        """A store call in a request is recorded with its query and rows; a failure as an error."""
        clock = Clock()
        recorder = Recorder(clock)

        class Fake:
            def rooms(self, limit: int) -> Deferred[list[str]]:
                return succeed(["a", "b"])

            def ping(self) -> Deferred[None]:
                return fail(RuntimeError("down"))

        store: Any = RecordingStore(Fake(), recorder)  # type: ignore[arg-type]
        record = recorder.begin("GET", "/api/rooms", "/api/rooms", None)
        token = recorder.enter(record)
        try:
            self.assertEqual(self.successResultOf(store.rooms(10)), ["a", "b"])
            self.failureResultOf(store.ping(), RuntimeError)
        finally:
            recorder.leave(token)
        rooms, ping = record.calls
        self.assertEqual((rooms.kind, rooms.name, rooms.detail["rows"]), ("store", "rooms", 2))
        self.assertTrue(ping.error)
        self.assertEqual(recorder.callKinds["store"].errors, 1)


class WebhookPostTests(SynchronousTestCase):
    def test_webhookPostRecorded(self) -> None:
        """A webhook POST is a webhook call: its host and size, never the URL's path or query;
        a POST that fails is an error."""
        from pushsvc.recording.wrap import recordedWebhookPost

        recorder = Recorder(Clock())
        sent: list[str] = []

        def post(url: str, body: bytes, headers: dict[str, str]) -> Deferred[int]:
            sent.append(url)
            return succeed(200) if "/up" in url else fail(RuntimeError("refused"))

        recorded = recordedWebhookPost(recorder, post)
        record = recorder.begin("POST", "/x", "/x", None)
        token = recorder.enter(record)
        try:
            self.assertEqual(
                self.successResultOf(recorded("https://u:p@hooks.test/up?token=s3", b"{}", {})), 200
            )
            self.failureResultOf(recorded("https://hooks.test/down", b"{}", {}), RuntimeError)
        finally:
            recorder.leave(token)
        ok, down = record.calls
        self.assertEqual((ok.kind, ok.detail), ("webhook", {"host": "hooks.test", "bytes": 2}))
        self.assertNotIn("s3", json.dumps(record.asJSON()))
        self.assertTrue(down.error)
        self.assertEqual(len(sent), 2)


class AdminSiteTests(SynchronousTestCase):
    def test_limitAndUnknownIds(self) -> None:
        """limit bounds the list; a bad limit is a 400, an unknown id a 404, both JSON errors."""
        stack = Stack()
        for _ in range(3):
            stack.publish(self)
        self.assertEqual(len(stack.adminJSON(self, "/api/requests?limit=2")), 2)
        self.assertIn("error", stack.adminJSON(self, "/api/requests?limit=0", 400))
        self.assertIn("error", stack.adminJSON(self, "/api/requests?limit=x", 400))
        self.assertIn("error", stack.adminJSON(self, "/api/requests/999999", 404))
        self.assertIn("error", stack.adminJSON(self, "/api/requests/abc", 404))

    def test_stats(self) -> None:
        """/api/stats has the aggregates per endpoint and per call kind, and the figures."""
        stack = Stack(subscribers=2)
        stack.publish(self)
        stack.figures.sample()
        stats = stack.adminJSON(self, "/api/stats")
        self.assertEqual(stats["endpoints"]["/apps/{app}/events"]["count"], 1)
        self.assertEqual(set(stats["calls"]), {"auth", "broker", "fanout"})
        self.assertEqual(stats["figures"]["connections"], 2)
        self.assertEqual(stats["figures"]["apps"][APP.id]["channels"], 1)

    def test_metricsParse(self) -> None:
        """/metrics parses, with process metrics, a request-duration histogram and app labels."""
        stack = Stack(subscribers=2)
        stack.publish(self)
        response = self.successResultOf(stack.adminHttp.get("http://admin.test/metrics"))
        text = self.successResultOf(response.text())
        families = {f.name: f for f in text_string_to_metric_families(text)}
        self.assertIn("process_resident_memory_bytes", families)
        histogram = families["pushsvc_http_request_duration_seconds"]
        self.assertEqual(histogram.type, "histogram")
        self.assertIn("/apps/{app}/events", {s.labels.get("endpoint") for s in histogram.samples})
        self.assertEqual(families["pushsvc_fanout_duration_seconds"].type, "histogram")
        apps = {s.labels.get("app_id") for s in families["pushsvc_app_deliveries"].samples}
        self.assertEqual(apps, {APP.id})

    def test_perAppSeriesHaveOneFamilyEach(self) -> None:
        """
        The per-app series (AppStats) are labelled app_id, and no two families share a name once
        parsed (the per-app connections counter is renamed beside its gauge).
        """
        from pushsvc.appstats import AppStats

        stats = AppStats()
        stats.of("1").connections = 2
        stats.of("1").connectionsTotal = 5
        metrics = Metrics(lambda: [], lambda: {}, None, stats.samples)
        names = [f.name for f in text_string_to_metric_families(metrics.render().decode())]
        self.assertEqual(len(names), len(set(names)))
        families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
        opened = families["pushsvc_app_connections_opened"].samples[0]
        self.assertEqual((opened.labels, opened.value), ({"app_id": "1"}, 5))

    def test_tokenGuard(self) -> None:
        """With a token: 401 without it or with a wrong one; the header or ?token= (which sets
        an HTTP-only cookie) let the request through."""
        stack = Stack()
        site, _ = makeAdminSite(stack.recorder, stack.figures, Resource(), Resource(), b"s3cret")
        http = stubTreq(site.resource)
        url = "http://admin.test/api/stats"
        self.assertEqual(self.successResultOf(http.get(url)).code, 401)
        wrong = {"authorization": ["Bearer nope"]}
        self.assertEqual(self.successResultOf(http.get(url, headers=wrong)).code, 401)
        right = {"authorization": ["Bearer s3cret"]}
        self.assertEqual(self.successResultOf(http.get(url, headers=right)).code, 200)
        response = self.successResultOf(http.get(url + "?token=s3cret"))
        self.assertEqual(response.code, 200)
        cookie = response.headers.getRawHeaders("set-cookie")[0]
        self.assertIn("HttpOnly", cookie)
        self.assertIn("SameSite=strict", cookie)

    def test_loopbackOnly(self) -> None:
        """Only loopback TCP interfaces and UNIX sockets count as loopback-only."""
        self.assertTrue(loopbackOnly("tcp:8081:interface=127.0.0.1"))
        self.assertTrue(loopbackOnly(r"tcp6:8081:interface=\:\:1"))
        self.assertTrue(loopbackOnly("unix:/run/pushsvc-admin.sock"))
        self.assertFalse(loopbackOnly("tcp:8081"))
        self.assertFalse(loopbackOnly("tcp:8081:interface=0.0.0.0"))
        self.assertFalse(loopbackOnly("ssl:8443:privateKey=k.pem"))


class StreamTests(SynchronousTestCase):
    def open(self, stack: Stack, app: str | None = None) -> Any:
        from twisted.web.test.requesthelper import DummyRequest

        class StreamRequest(DummyRequest):
            def registerProducer(self, producer: Any, streaming: bool) -> None:
                self.producer = producer  # DummyRequest's would pull from it forever

        request = StreamRequest([b""])
        if app is not None:
            request.args = {b"app": [app.encode()]}
        result = stack.streams.render(request)
        return request, result

    def test_backlogThenLive(self) -> None:
        """
        A stream first gets the console's backlog (envelopes decoded, data cut), then figures
        each second and console events as they come; a stream for another app gets no events.
        """
        stack = Stack(subscribers=1)
        stack.publish(self)
        request, result = self.open(stack)
        other, _ = self.open(stack, app="someone-else")
        self.assertEqual(result, 1)  # NOT_DONE_YET
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"content-type")[0][:17], b"text/event-stream"
        )
        text = b"".join(request.written).decode()
        self.assertIn('"kind":"connection"', text)
        self.assertIn('"kind":"api_message"', text)
        self.assertIn('"event":"greet"', text)
        stack.figures.sample()
        stack.publish(self)
        text = b"".join(request.written).decode()
        self.assertEqual(text.count("event: figures"), 1)
        self.assertEqual(text.count('"kind":"api_message"'), 2)
        self.assertNotIn("event: console", b"".join(other.written).decode())

    def test_pausedStreamSkipsAndStreamsAreCapped(self) -> None:
        """A stream that cannot keep up skips events; past MAX_STREAMS a stream is refused."""
        from pushsvc.admin.site import MAX_STREAMS

        stack = Stack()
        request, _ = self.open(stack)
        [stream] = stack.streams.streams
        stream.pauseProducing()
        before = len(request.written)
        stack.figures.sample()
        self.assertEqual((len(request.written), stream.dropped), (before, 1))
        for _ in range(MAX_STREAMS - 1):
            self.open(stack)
        refused, body = self.open(stack)
        self.assertEqual(refused.responseCode, 503)
        self.assertIn(b"error", body)
        stack.streams.forget(stream)
        self.assertNotIn(stream.console, stack.recorder.consoleListeners)
