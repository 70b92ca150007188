"""
Webhooks to an app's backend (issue 14): the format and its signature (checked by the official
Python and Node SDKs), debounce, batching and retries on a L{Clock}, the store keeping batches,
the hub and the cluster state deciding occupied/vacated and member events once, and real
C{twistd pushsvc} processes posting to a real receiver on a loopback port.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pusher
import pusher.errors
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from pushsvc.apps import App, Apps
from pushsvc.fanout.registry import Registry
from pushsvc.frames import Member
from pushsvc.hub import Hub
from pushsvc.interfaces import PushSettings
from pushsvc.local import LocalBroker
from pushsvc.store.interface import PendingWebhook
from pushsvc.store.memory import MemoryStore
from pushsvc.webhooks import format as fmt
from pushsvc.webhooks.format import WebhookConfigError, WebhookTarget, parseWebhooks
from pushsvc.webhooks.sender import WebhookSender
from tests.helpers import freePort, listenLocal, portOf, requirePusherJS, requireService
from tests.procs import killIfRunning, startTwistd
from tests.redisutil import Conn, RedisTestCase

JS = Path(__file__).resolve().parent / "js"
URL = "http://127.0.0.1:9/hooks"


def makeApp(*targets: WebhookTarget, appId: str = "1") -> App:
    return App(appId, f"key{appId}", f"secret{appId}", webhooks=targets)


class FakePost:
    """A C{post} function: records each call; the test fires its Deferred (or it hangs)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes, dict[str, str], Deferred[int]]] = []

    def __call__(self, url: str, body: bytes, headers: dict[str, str]) -> Deferred[int]:
        d: Deferred[int] = Deferred()
        self.calls.append((url, body, headers, d))
        return d

    def events(self, i: int = -1) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = json.loads(self.calls[i][1])["events"]
        return events

    def answer(self, status: int, i: int = -1) -> None:
        self.calls[i][3].callback(status)


def sender(
    *apps: App, store: MemoryStore | None = None, **kw: Any
) -> tuple[WebhookSender, FakePost, Clock]:
    clock = Clock()
    post = FakePost()
    byId = {a.id: a for a in apps}
    return WebhookSender(byId.get, store, clock, post, **kw), post, clock


class FormatTests(SynchronousTestCase):
    def test_parseWebhooks(self) -> None:
        """URLs and {url, events, headers} tables become targets; None is none."""
        self.assertEqual(parseWebhooks(None), ())
        targets = parseWebhooks(
            [
                "https://backend.example/hooks",
                {
                    "url": "http://127.0.0.1:8000/p",
                    "events": ["member_added", "client_event"],
                    "headers": {"Authorization": "Bearer x"},
                },
            ]
        )
        self.assertEqual(targets[0], WebhookTarget("https://backend.example/hooks"))
        self.assertTrue(targets[0].wants("cache_miss"))
        self.assertEqual(targets[1].events, frozenset({"member_added", "client_event"}))
        self.assertFalse(targets[1].wants("channel_occupied"))
        self.assertEqual(targets[1].headers, (("Authorization", "Bearer x"),))

    def test_parseWebhooksRefuses(self) -> None:
        """Each bad setting is refused with a sentence naming what is wrong."""
        cases: list[tuple[object, str]] = [
            ("http://x", "must be a list"),
            (["ftp://x/"], "http:// or https://"),
            (["/relative"], "absolute"),
            ([{"url": "http://x/", "event": []}], "unknown webhook key(s) event"),
            ([{"url": "http://x/", "events": ["nope"]}], "unknown event kind(s) nope"),
            ([{"url": "http://x/", "events": "member_added"}], "events must be a list"),
            ([{"url": "http://x/", "headers": {"X-Pusher-Key": "k"}}], "set by pushsvc"),
            ([{"url": "http://x/", "headers": {"X-A": "a\r\nX-B: b"}}], "not a valid header"),
            ([{"url": "http://x/", "headers": {"X-A": 1}}], "must be strings"),
            (["http://x/", "http://x/"], "twice"),
            ([42], "a URL or a table"),
            ([f"http://x/{i}" for i in range(11)], "at most 10"),
        ]
        for raw, message in cases:
            with self.assertRaises(WebhookConfigError) as caught:
                parseWebhooks(raw)
            self.assertIn(message, str(caught.exception), raw)

    def test_signatureAcceptedByPythonSDK(self) -> None:
        """The official Python SDK's validate_webhook accepts our headers and body, and only
        with the right secret."""
        body = fmt.encodeBody(int(time.time() * 1000), [fmt.channelEvent(fmt.OCCUPIED, "c")])
        headers = fmt.requestHeaders("key1", "secret1", "id1", body)
        client = pusher.Pusher(app_id="1", key="key1", secret="secret1")
        payload = client.validate_webhook(
            headers["X-Pusher-Key"], headers["X-Pusher-Signature"], body.decode()
        )
        self.assertEqual(payload["events"], [{"name": "channel_occupied", "channel": "c"}])
        other = pusher.Pusher(app_id="1", key="key1", secret="other")
        self.assertIsNone(
            other.validate_webhook("key1", headers["X-Pusher-Signature"], body.decode())
        )

    def test_describeURLHidesCredentials(self) -> None:
        """Log lines name a URL without its user, password or query."""
        self.assertEqual(
            fmt.describeURL("https://u:pw@h.example:8443/p/q?token=t"),
            "https://h.example:8443/p/q",
        )


class SenderTests(SynchronousTestCase):
    def test_batchOfTwentyAtOnce(self) -> None:
        """20 events go out at once in one signed POST; a 21st waits 250 ms for company."""
        app = makeApp(WebhookTarget(URL, headers=(("Authorization", "Bearer t"),)))
        s, post, clock = sender(app)
        for i in range(21):
            s.cacheMiss("1", f"cache-{i}")
        self.assertEqual(len(post.calls), 1)
        url, body, headers, _ = post.calls[0]
        self.assertEqual(url, URL)
        self.assertEqual(len(post.events(0)), 20)
        self.assertEqual(headers["X-Pusher-Key"], "key1")
        self.assertEqual(headers["X-Pusher-Signature"], fmt.sign("secret1", body))
        self.assertEqual(headers["Content-Type"], "application/json")
        self.assertEqual(headers["Authorization"], "Bearer t")
        clock.advance(0.249)
        self.assertEqual(len(post.calls), 1)
        clock.advance(0.001)
        self.assertEqual(post.events(), [{"name": "cache_miss", "channel": "cache-20"}])

    def test_filterAndApps(self) -> None:
        """A target gets only the kinds it asked for; an app without webhooks sends nothing."""
        app = makeApp(WebhookTarget(URL, frozenset({"member_added"})))
        bare = makeApp(appId="2")
        s, post, clock = sender(app, bare)
        s.occupied("1", "presence-a")
        s.memberAdded("1", "presence-a", "u1")
        s.occupied("2", "c")
        s.clientEvent("2", "private-c", "client-x", "{}", "1.2", None)
        clock.advance(1)
        self.assertEqual(len(post.calls), 1)
        self.assertEqual(
            post.events(), [{"name": "member_added", "channel": "presence-a", "user_id": "u1"}]
        )

    def test_clientEventFields(self) -> None:
        """A client_event carries channel, event, data, socket_id, and user_id on presence."""
        s, post, clock = sender(makeApp(WebhookTarget(URL)))
        s.clientEvent("1", "presence-p", "client-typing", '{"a":1}', "1.2", "u9")
        s.clientEvent("1", "private-p", "client-typing", "x", "3.4", None)
        clock.advance(0.25)
        self.assertEqual(
            post.events(),
            [
                {
                    "name": "client_event",
                    "channel": "presence-p",
                    "event": "client-typing",
                    "data": '{"a":1}',
                    "socket_id": "1.2",
                    "user_id": "u9",
                },
                {
                    "name": "client_event",
                    "channel": "private-p",
                    "event": "client-typing",
                    "data": "x",
                    "socket_id": "3.4",
                },
            ],
        )

    def test_debounceReload(self) -> None:
        """A leave and a come back within 3 s (a page reload) send nothing at all."""
        s, post, clock = sender(makeApp(WebhookTarget(URL)))
        s.vacated("1", "presence-a")
        s.memberRemoved("1", "presence-a", "u1")
        clock.advance(2.9)
        s.occupied("1", "presence-a")
        s.memberAdded("1", "presence-a", "u1")
        clock.advance(10)
        self.assertEqual(post.calls, [])

    def test_debounceLeave(self) -> None:
        """A leave for longer goes out 3 s later (plus the batch wait); a later come is sent."""
        s, post, clock = sender(makeApp(WebhookTarget(URL)))
        s.memberRemoved("1", "presence-a", "u1")
        s.vacated("1", "presence-a")
        clock.advance(2.99)
        self.assertEqual(post.calls, [])
        clock.advance(0.01)
        clock.advance(0.25)
        self.assertEqual(
            post.events(),
            [
                {"name": "member_removed", "channel": "presence-a", "user_id": "u1"},
                {"name": "channel_vacated", "channel": "presence-a"},
            ],
        )
        s.occupied("1", "presence-a")
        clock.advance(0.25)
        self.assertEqual(post.events(), [{"name": "channel_occupied", "channel": "presence-a"}])

    def test_debounceConfigurable(self) -> None:
        """With debounce 0 a vacated goes out with the next batch."""
        s, post, clock = sender(makeApp(WebhookTarget(URL)), debounce=0)
        s.vacated("1", "c")
        clock.advance(0.25)
        self.assertEqual(post.events(), [{"name": "channel_vacated", "channel": "c"}])

    def test_retrySameIdWithBackoff(self) -> None:
        """
        500, refused and a timeout are retried after 1, 2, 4 s with the same body and id; a 2xx
        ends it; the figures count each step and the store forgets the delivered batch.
        """
        store = MemoryStore()
        s, post, clock = sender(makeApp(WebhookTarget(URL)), store=store)
        s.occupied("1", "c")
        clock.advance(0.25)
        self.assertEqual(len(self.successResultOf(store.pendingWebhooks(10))), 1)
        post.answer(500)
        clock.advance(0.99)
        self.assertEqual(len(post.calls), 1)
        clock.advance(0.01)
        self.assertEqual(len(post.calls), 2)
        post.calls[-1][3].errback(Failure(ConnectionRefusedError()))
        clock.advance(2)
        self.assertEqual(len(post.calls), 3)
        clock.advance(5)  # no answer: the timeout
        self.assertEqual(len(post.calls), 3)
        clock.advance(4)
        self.assertEqual(len(post.calls), 4)
        post.answer(204)
        ids = {c[2]["X-Pushsvc-Webhook-Id"] for c in post.calls}
        self.assertEqual(len(ids), 1)
        self.assertEqual(len({c[1] for c in post.calls}), 1)
        figures = s.figures("1")
        self.assertEqual(
            (figures.sent, figures.failed, figures.retried, figures.dropped, figures.queued),
            (1, 3, 3, 0, 0),
        )
        self.assertEqual(self.successResultOf(store.pendingWebhooks(10)), [])
        clock.advance(600)
        self.assertEqual(len(post.calls), 4)

    def test_droppedAfterFiveMinutes(self) -> None:
        """A receiver that keeps failing: retries stop 5 minutes after the batch was made; the
        batch is dropped, counted and forgotten by the store."""
        store = MemoryStore()
        s, post, clock = sender(makeApp(WebhookTarget(URL)), store=store)
        s.occupied("1", "c")
        clock.advance(0.25)
        while clock.seconds() < 300.25:
            if not post.calls[-1][3].called:
                post.answer(503)
            clock.advance(1)
        attempts = len(post.calls)
        # At 0, then 1, 2, 4, 8, 16, 32, 60, 60, 60 s later: the next would be past 5 minutes.
        self.assertEqual(attempts, 10)
        figures = s.figures("1")
        self.assertEqual((figures.dropped, figures.queued, figures.sent), (1, 0, 0))
        self.assertEqual(self.successResultOf(store.pendingWebhooks(10)), [])
        clock.advance(1000)
        self.assertEqual(len(post.calls), attempts)

    def test_queueBounded(self) -> None:
        """Past the bound the oldest batch is dropped and counted; in flight at most N."""
        s, post, clock = sender(makeApp(WebhookTarget(URL)), maxQueue=3, maxInFlight=2)
        for i in range(5):
            s.cacheMiss("1", f"cache-{i}")
            clock.advance(0.25)
        # The two oldest were dropped while in flight (their requests cancelled), which let
        # the next two go: never more than two unanswered at once.
        self.assertEqual(len(post.calls), 4)
        self.assertEqual(len([c for c in post.calls if not c[3].called]), 2)
        figures = s.figures("1")
        self.assertEqual((figures.queued, figures.dropped, figures.failed), (3, 2, 0))
        bodies = [json.loads(c[1])["events"][0]["channel"] for c in post.calls]
        self.assertEqual(bodies, ["cache-0", "cache-1", "cache-2", "cache-3"])

    def test_slowReceiverDelaysNoOtherApp(self) -> None:
        """One app's receiver that never answers holds nothing of another app's webhooks."""
        slow = makeApp(WebhookTarget("http://127.0.0.1:9/slow"), appId="1")
        fast = makeApp(WebhookTarget("http://127.0.0.1:9/fast"), appId="2")
        s, post, clock = sender(slow, fast, maxInFlight=1)
        for i in range(30):
            s.cacheMiss("1", f"cache-{i}")
        s.cacheMiss("2", "cache-x")
        clock.advance(0.25)
        fastCalls = [c for c in post.calls if c[0].endswith("/fast")]
        self.assertEqual(len(fastCalls), 1)
        fastCalls[0][3].callback(200)
        self.assertEqual(s.figures("2").sent, 1)

    def test_resumeFromStore(self) -> None:
        """Batches the store kept (a restart) go out again with their id and body."""
        store = MemoryStore()
        body = fmt.encodeBody(1, [fmt.channelEvent(fmt.OCCUPIED, "c")])
        store.saveWebhook(PendingWebhook("abc", "1", URL, body, 0.0))
        s, post, clock = sender(makeApp(WebhookTarget(URL)), store=store)
        self.assertEqual(self.successResultOf(s.resume()), 1)
        self.assertEqual(post.calls[0][1], body)
        self.assertEqual(post.calls[0][2]["X-Pushsvc-Webhook-Id"], "abc")
        post.answer(200)
        self.assertEqual(self.successResultOf(store.pendingWebhooks(10)), [])

    def test_stopKeepsEverything(self) -> None:
        """Stop writes gathered and debounced events to the store and cancels every timer."""
        store = MemoryStore()
        s, post, clock = sender(makeApp(WebhookTarget(URL)), store=store)
        s.occupied("1", "a")
        s.vacated("1", "b")
        self.successResultOf(s.stop())
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(post.calls, [])
        pending = self.successResultOf(store.pendingWebhooks(10))
        events = [e for p in pending for e in json.loads(p.body)["events"]]
        self.assertEqual(sorted(e["name"] for e in events), ["channel_occupied", "channel_vacated"])

    def test_metricsPerApp(self) -> None:
        """The figures are kept per app (for labels) and summed in metrics()."""
        s, post, clock = sender(makeApp(WebhookTarget(URL)))
        s.occupied("1", "c")
        clock.advance(0.25)
        clock.advance(0.5)
        post.answer(200)
        self.assertEqual(set(s.allFigures()), {"1"})
        self.assertEqual(s.allFigures()["1"].latencySum, 0.5)
        metrics = {name: value for name, _, _, value in s.metrics()}
        self.assertEqual(metrics["pushsvc_webhooks_sent_total"], 1)
        self.assertEqual(metrics["pushsvc_webhooks_queued"], 0)


class RecordingEvents:
    """A WebhookEvents that records what the hub tells it."""

    def __init__(self) -> None:
        self.told: list[tuple[Any, ...]] = []

    def occupied(self, appId: str, channel: str) -> None:
        self.told.append(("occupied", channel))

    def vacated(self, appId: str, channel: str) -> None:
        self.told.append(("vacated", channel))

    def memberAdded(self, appId: str, channel: str, userId: str) -> None:
        self.told.append(("member_added", channel, userId))

    def memberRemoved(self, appId: str, channel: str, userId: str) -> None:
        self.told.append(("member_removed", channel, userId))

    def clientEvent(
        self, appId: str, channel: str, event: str, data: str, socketId: str, userId: str | None
    ) -> None:
        self.told.append(("client_event", channel, event, userId))

    def cacheMiss(self, appId: str, channel: str) -> None:
        self.told.append(("cache_miss", channel))


class HubTests(SynchronousTestCase):
    """One process: the hub and L{LocalState} tell the webhooks once per change."""

    def test_occupancyAndMembers(self) -> None:
        """Occupied on the first subscriber, vacated after the last; member_added for a user's
        first connection, member_removed for the last."""
        clock = Clock()
        registry = Registry(PushSettings(), clock)
        hub = Hub(registry, LocalBroker(clock), clock)
        hub.webhooks = told = RecordingEvents()
        a, b = Conn("1", "1.1"), Conn("1", "1.2")
        for conn in (a, b):
            hub.connect(conn)
            hub.subscribe(conn, "presence-p", Member("u1", {}))
        hub.subscribe(a, "private-c")
        self.assertEqual(
            told.told,
            [
                ("occupied", "presence-p"),
                ("member_added", "presence-p", "u1"),
                ("occupied", "private-c"),
            ],
        )
        del told.told[:]
        hub.clientEvent(a, "private-c", "client-x", "{}", None)
        hub.disconnect(a)
        self.assertEqual(
            told.told, [("client_event", "private-c", "client-x", None), ("vacated", "private-c")]
        )
        del told.told[:]
        hub.disconnect(b)
        self.assertEqual(
            told.told, [("member_removed", "presence-p", "u1"), ("vacated", "presence-p")]
        )


# -- real sockets ----------------------------------------------------------------------------------


class Receiver(Resource):
    """An app backend: records each webhook POST; answers the statuses given, then 200."""

    isLeaf = True

    def __init__(self, statuses: list[int] | None = None) -> None:
        super().__init__()
        self.statuses = list(statuses or [])
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self._waiting: list[tuple[Callable[[], bool], Deferred[None]]] = []

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        body = request.content.read()
        headers = {
            k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()
        }
        self.requests.append((headers, body))
        request.setResponseCode(self.statuses.pop(0) if self.statuses else 200)
        for item in list(self._waiting):
            if item[0]():
                self._waiting.remove(item)
                item[1].callback(None)
        return b"{}"

    def events(self) -> list[dict[str, Any]]:
        """The events of every distinct batch (by id) received."""
        seen: dict[str, list[dict[str, Any]]] = {}
        for headers, body in self.requests:
            seen.setdefault(headers["x-pushsvc-webhook-id"], json.loads(body)["events"])
        return [e for events in seen.values() for e in events]

    def names(self) -> list[tuple[str, ...]]:
        return [
            (e["name"], e["channel"], *([e["user_id"]] if "user_id" in e else []))
            for e in self.events()
        ]

    def waitFor(self, check: Callable[[], bool], timeout: float = 20) -> Deferred[None]:
        if check():
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append((check, d))
        return d.addTimeout(timeout, reactor)


def listenReceiver(case: TestCase, receiver: Receiver, port: int = 0) -> int:
    listening = listenLocal(Site(receiver), port)
    case.addCleanup(listening.stopListening)
    return portOf(listening)


@inlineCallbacks
def checkWithSDKs(app: App, requests: list[tuple[dict[str, str], bytes]]) -> Any:
    """Every request validates with the Python SDK and the Node SDK's webhook().isValid()."""
    client = pusher.Pusher(app_id=app.id, key=app.key, secret=app.secret)
    for headers, body in requests:
        valid = client.validate_webhook(
            headers["x-pusher-key"], headers["x-pusher-signature"], body.decode()
        )
        assert valid is not None, body
    if not (JS / "node_modules" / "pusher").is_dir():
        requireService("the Node pusher SDK", "is not installed: run npm ci --prefix tests/js")
    payload = json.dumps(
        {
            "appId": app.id,
            "key": app.key,
            "secret": app.secret,
            "requests": [{"headers": h, "body": b.decode()} for h, b in requests],
        }
    )
    out, err, code = yield _node(payload)
    assert code == 0, err
    results = json.loads(out)
    assert [r["valid"] for r in results] == [True] * len(requests), results
    return results


def _node(stdin: str) -> Deferred[tuple[bytes, bytes, int]]:
    from twisted.internet.protocol import ProcessProtocol

    class Proto(ProcessProtocol):
        def __init__(self) -> None:
            self.out = b""
            self.err = b""
            self.done: Deferred[tuple[bytes, bytes, int]] = Deferred()

        def connectionMade(self) -> None:
            assert self.transport is not None
            self.transport.write(stdin.encode())
            self.transport.closeStdin()

        def outReceived(self, data: bytes) -> None:
            self.out += data

        def errReceived(self, data: bytes) -> None:
            self.err += data

        def processEnded(self, reason: Failure) -> None:
            code = getattr(reason.value, "exitCode", 0) or 0
            self.done.callback((self.out, self.err, code))

    proto = Proto()
    env = {"PATH": os.environ.get("PATH", ""), "NODE_PATH": str(JS / "node_modules")}
    reactor.spawnProcess(proto, "node", ["node", str(JS / "webhook.js")], env=env, path=str(JS))
    return proto.done.addTimeout(30, reactor)


class LiveCase(TestCase):
    """A real C{twistd pushsvc} (SQLite store) posting to a real receiver on a loopback port."""

    timeout = 120

    def setUp(self) -> None:
        self.app = App("424242", "livekey", "livesecret-0123456789")
        self.dataDir = self.mktemp()

    def start(self, receiverPort: int, debounce: float = 2.0) -> Any:
        port = freePort()
        args = [
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--data-dir",
            self.dataDir,
            "--app-id",
            self.app.id,
            "--app-key",
            self.app.key,
            "--webhook-url",
            f"http://127.0.0.1:{receiverPort}/hooks?token=t",
            "--webhook-debounce",
            str(debounce),
        ]
        proc = startTwistd(args, env={"PUSHSVC_APP_SECRET": self.app.secret})
        self.addCleanup(killIfRunning, proc)
        return proc, port

    @inlineCallbacks
    def client(self, port: int) -> Any:
        from tests.wsclient import PATH, connectClient

        client = yield connectClient(port, PATH.format(key=self.app.key), established=False)

        def close() -> Any:
            if not client.closed.called:
                client.transport.abortConnection()
            return client.closed

        self.addCleanup(close)
        yield client.expect("pusher:connection_established")
        return client


class LiveTests(LiveCase):
    @inlineCallbacks
    def test_everyKindSignedReloadAndLeave(self) -> Any:
        """
        occupied, member_added, client_event and cache_miss arrive, each request accepted by the
        Python and Node SDKs; a page reload (reconnect within the debounce) sends nothing; a
        real leave sends member_removed and channel_vacated after the debounce.
        """
        from tests.wsclient import subscribeClient

        receiver = Receiver()
        proc, port = self.start(listenReceiver(self, receiver))
        yield proc.waitFor("message store ready")
        member = json.dumps({"user_id": "u1", "user_info": {"name": "Ann"}})
        a = yield self.client(port)
        yield subscribeClient(self.app, a, "presence-room", member)
        yield subscribeClient(self.app, a, "private-c")
        a.sendJSON("pusher:subscribe", {"channel": "cache-empty"})
        miss = yield a.expect("pusher:cache_miss", "cache-empty")
        self.assertEqual(miss.get("data"), {})
        a.sendJSON("client-typing", {"x": 1}, "presence-room")
        expected = [
            ("channel_occupied", "presence-room"),
            ("member_added", "presence-room", "u1"),
            ("channel_occupied", "private-c"),
            ("channel_occupied", "cache-empty"),
            ("cache_miss", "cache-empty"),
            ("client_event", "presence-room", "u1"),
        ]
        yield receiver.waitFor(lambda: len(receiver.events()) >= len(expected))
        self.assertEqual(sorted(receiver.names()), sorted(expected))
        client = next(e for e in receiver.events() if e["name"] == "client_event")
        self.assertEqual(
            (client["event"], json.loads(client["data"]), client["socket_id"]),
            ("client-typing", {"x": 1}, a.socketId),
        )
        self.assertEqual(receiver.requests[0][0]["x-pusher-key"], self.app.key)
        results = yield checkWithSDKs(self.app, receiver.requests)
        nodeEvents = [e["name"] for r in results for e in r["events"]]
        self.assertEqual(sorted(nodeEvents), sorted(n[0] for n in expected))

        # A reload: gone and back well within the 2 s debounce.
        before = len(receiver.requests)
        a.transport.abortConnection()
        yield a.closed
        b = yield self.client(port)
        yield subscribeClient(self.app, b, "presence-room", member)
        # The real leave, after which member_removed and vacated come once the debounce passed.
        b.transport.abortConnection()
        yield b.closed
        leftAt = time.monotonic()
        # (private-c and cache-empty, not subscribed again, are vacated too.)
        gone = [
            ("member_removed", "presence-room", "u1"),
            ("channel_vacated", "presence-room"),
            ("channel_vacated", "private-c"),
            ("channel_vacated", "cache-empty"),
        ]
        yield receiver.waitFor(lambda: all(g in receiver.names() for g in gone))
        self.assertGreaterEqual(time.monotonic() - leftAt, 1.9)
        # Nothing of the reload: no removed + added, no vacated + occupied of presence-room.
        self.assertEqual(sorted(receiver.names()[len(expected) :]), sorted(gone))
        self.assertGreater(len(receiver.requests), before)
        yield checkWithSDKs(self.app, receiver.requests)

    @inlineCallbacks
    def test_retriedWithTheSameId(self) -> Any:
        """A receiver that answers 500 three times then 200 receives the batch 4 times, each
        with the same id and body; /metrics counts the retries and the delivery."""
        from tests.wsclient import subscribeClient

        receiver = Receiver([500, 500, 500])
        proc, port = self.start(listenReceiver(self, receiver))
        yield proc.waitFor("message store ready")
        a = yield self.client(port)
        yield subscribeClient(self.app, a, "private-retry")
        yield receiver.waitFor(lambda: len(receiver.requests) >= 4)
        ids = {h["x-pushsvc-webhook-id"] for h, _ in receiver.requests}
        self.assertEqual(len(ids), 1)
        self.assertEqual(len({b for _, b in receiver.requests}), 1)
        self.assertEqual(receiver.names(), [("channel_occupied", "private-retry")])
        yield proc.waitFor("failed (status 500); retry 3 in 4")
        self.assertNotIn(b"livesecret", proc.output)
        self.assertNotIn(b"token=t", proc.output)

    @inlineCallbacks
    def test_receiverDownAcrossRestart(self) -> Any:
        """A batch that could not be delivered before a restart (the receiver was down) is
        delivered after it, with the id it had, from the store."""
        from tests.wsclient import subscribeClient

        receiverPort = freePort()  # nothing listens there yet
        proc, port = self.start(receiverPort)
        yield proc.waitFor("message store ready")
        a = yield self.client(port)
        yield subscribeClient(self.app, a, "private-durable")
        yield proc.waitFor("retry 1 in 1")
        code = yield proc.signal("TERM")
        self.assertEqual(code, -signal.SIGTERM)  # twistd re-raises it after a clean stop
        receiver = Receiver()
        listenReceiver(self, receiver, receiverPort)
        proc2, port2 = self.start(receiverPort)
        yield proc2.waitFor("webhook batches kept from before the restart queued again")
        yield receiver.waitFor(lambda: ("channel_occupied", "private-durable") in receiver.names())
        yield receiver.waitFor(lambda: ("channel_vacated", "private-durable") in receiver.names())
        yield checkWithSDKs(self.app, receiver.requests)
        yield proc2.signal("TERM")


class TwoNodeTests(TestCase):
    """Two real processes on Redis: each webhook once for the cluster."""

    timeout = 120

    def setUp(self) -> None:
        from tests.redisutil import requireRedis

        requireRedis()

    @inlineCallbacks
    def test_onceForTheCluster(self) -> Any:
        """
        The same channel occupied on both nodes: one channel_occupied, one channel_vacated when
        the last leaves. A node SIGKILLed with a presence member: one member_removed, from the
        node that reaps it.
        """
        from tests.redisutil import deleteKeys
        from tests.test_cluster import Cluster
        from tests.wsclient import PATH, connectClient, subscribeClient

        receiver = Receiver()
        rport = listenReceiver(self, receiver)
        cluster = Cluster(self)
        self.addCleanup(deleteKeys, f"pushsvc:{cluster.app.id}:*")
        yield cluster.start(
            2, ("--webhook-url", f"http://127.0.0.1:{rport}/h", "--webhook-debounce", "0.5")
        )
        clients = []
        for i in (0, 1):
            c = yield connectClient(cluster.ports[i], PATH.format(key=cluster.app.key))
            self.addCleanup(c.transport.abortConnection)
            clients.append(c)
            yield subscribeClient(cluster.app, c, "private-shared", timeout=10)
        member = json.dumps({"user_id": "victim", "user_info": {}})
        yield subscribeClient(cluster.app, clients[1], "presence-p", member, timeout=10)
        yield receiver.waitFor(lambda: ("member_added", "presence-p", "victim") in receiver.names())
        for c in clients[:1]:
            c.transport.abortConnection()
            yield c.closed
        # Node 1 dies with the member and its private-shared subscriber; node 0 reaps it.
        cluster.procs[1].transport.signalProcess("KILL")  # type: ignore[union-attr]  # running
        yield cluster.procs[1].ended
        yield receiver.waitFor(
            lambda: (
                ("member_removed", "presence-p", "victim") in receiver.names()
                and ("channel_vacated", "private-shared") in receiver.names()
            ),
            timeout=30,
        )
        names = receiver.names()
        self.assertEqual(names.count(("channel_occupied", "private-shared")), 1)
        self.assertEqual(names.count(("channel_vacated", "private-shared")), 1)
        self.assertEqual(names.count(("member_added", "presence-p", "victim")), 1)
        self.assertEqual(names.count(("member_removed", "presence-p", "victim")), 1)
        yield checkWithSDKs(cluster.app, receiver.requests)


class PusherJSServerEventsTests(TestCase):
    """pusher-js (node, tests/js/client.js) receives subscription counts and watchlist events."""

    timeout = 90

    def setUp(self) -> None:

        from pushsvc.counts import SubscriptionCounts
        from pushsvc.ws.protocol import makeAppResource

        self.node = requirePusherJS()
        self.app = App("77", "counts-key", "counts-secret", subscriptionCount=True)
        settings = PushSettings()
        self.registry = Registry(settings, reactor)
        self.hub = Hub(self.registry, LocalBroker(), reactor)
        self.hub.counts = SubscriptionCounts(
            Apps([self.app]).byId, self.hub.sendInternal, reactor, interval=0.5
        )
        self.addCleanup(self.hub.counts.stop)
        root = Resource()
        resource = makeAppResource(Apps([self.app]), self.hub, self.registry, reactor, settings)
        self.factory = resource._factory  # type: ignore[attr-defined]
        root.putChild(b"app", resource)
        self.port = listenLocal(Site(root))
        self.children: list[Any] = []
        self.addCleanup(self.cleanUp)

    @inlineCallbacks
    def cleanUp(self) -> Any:
        from twisted.internet.error import ProcessExitedAlready

        for child in self.children:
            if not child.ended.called:
                try:
                    child.transport.signalProcess("KILL")
                except ProcessExitedAlready:
                    pass
            yield child.ended
        yield self.factory.registry.whenIdle()
        yield self.port.stopListening()

    def spawn(
        self,
        userId: str,
        channels: list[str],
        signin: bool = False,
        watchlist: list[str] | None = None,
        events: tuple[str, ...] = (),
    ) -> Any:
        from tests.test_pusherjs import NodeClient

        options: dict[str, Any] = {
            "key": self.app.key,
            "secret": self.app.secret,
            "wsHost": "127.0.0.1",
            "wsPort": self.port.getHost().port,  # type: ignore[attr-defined]
            "userId": userId,
            "channels": channels,
            "signin": signin,
            "events": list(events),
        }
        if watchlist is not None:
            options["watchlist"] = watchlist
        child = NodeClient(userId)
        env = {"PATH": os.environ.get("PATH", ""), "NODE_PATH": str(JS / "node_modules")}
        reactor.spawnProcess(
            child,
            self.node,
            [self.node, str(JS / "client.js"), json.dumps(options)],
            env=env,
            path=str(JS),
        )
        self.children.append(child)
        return child

    @inlineCallbacks
    def test_subscriptionCount(self) -> Any:
        """pusher-js's pusher:subscription_count fires with the count as subscribers come and
        go (the second change after the throttle interval)."""
        ann = self.spawn("ann", ["news"], events=("pusher:subscription_count",))
        first = yield ann.expect("bound", event="pusher:subscription_count")
        self.assertEqual(first["data"], {"subscription_count": 1})
        bob = self.spawn("bob", ["news"])
        yield bob.expect("subscribed", channel="news")
        second = yield ann.expect("bound", event="pusher:subscription_count")
        self.assertEqual(second["data"], {"subscription_count": 2})
        bob.command(cmd="disconnect")
        yield bob.ended
        third = yield ann.expect("bound", event="pusher:subscription_count")
        self.assertEqual(third["data"], {"subscription_count": 1})

    @inlineCallbacks
    def test_watchlistOnlineOffline(self) -> Any:
        """A user signed in with a watchlist hears, through pusher.user.watchlist, who of it is
        online already, who comes online, and who goes offline."""
        bob = self.spawn("bob", [], signin=True)
        yield bob.expect("signed_in")
        ann = self.spawn("ann", [], signin=True, watchlist=["bob", "carol"])
        online = yield ann.expect("watchlist", name="online")
        self.assertEqual(online["user_ids"], ["bob"])
        carol = self.spawn("carol", [], signin=True)
        yield carol.expect("signed_in")
        online = yield ann.expect("watchlist", name="online")
        self.assertEqual(online["user_ids"], ["carol"])
        bob.command(cmd="disconnect")
        offline = yield ann.expect("watchlist", name="offline")
        self.assertEqual(offline["user_ids"], ["bob"])


class CountsTests(SynchronousTestCase):
    def test_throttledPerChannel(self) -> None:
        """The first count goes at once, later ones at most once per interval (the latest),
        only for apps that enabled it, with a subscription_count webhook alongside."""
        from pushsvc.counts import SubscriptionCounts

        clock = Clock()
        sent: list[tuple[str, str, str, str]] = []
        on = App("1", "k1", "s1", subscriptionCount=True, webhooks=(WebhookTarget(URL),))
        off = App("2", "k2", "s2")
        hooks, post, _ = sender(on)
        hooks.clock = clock
        counts = SubscriptionCounts(
            {"1": on, "2": off}.get, lambda *a: sent.append(a), clock, hooks, interval=5
        )
        counts("1", "news", 1)
        counts("2", "news", 1)
        counts("1", "news", 2)
        counts("1", "news", 3)
        counts("1", "other", 1)
        self.assertEqual(
            [(a, c, json.loads(d)) for a, c, _, d in sent],
            [("1", "news", {"subscription_count": 1}), ("1", "other", {"subscription_count": 1})],
        )
        clock.advance(5)
        self.assertEqual(json.loads(sent[-1][3]), {"subscription_count": 3})
        self.assertEqual(len(sent), 3)
        clock.advance(5)
        self.assertEqual(len(sent), 3)
        clock.advance(0.25)
        webhooks = [e for i in range(len(post.calls)) for e in post.events(i)]
        self.assertEqual(
            [(e["name"], e["channel"], e["subscription_count"]) for e in webhooks],
            [
                ("subscription_count", "news", 1),
                ("subscription_count", "other", 1),
                ("subscription_count", "news", 3),
            ],
        )
        counts.stop()
        self.successResultOf(hooks.stop())
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_reservedChannelsSendNoWebhooks(self) -> None:
        """Signing in (C{#server-to-user-}) and watching (C{#watchlist-}) send no channel
        webhooks and no counts; a user's first sign-in tells its watchers it is online."""
        clock = Clock()
        registry = Registry(PushSettings(), clock)
        hub = Hub(registry, LocalBroker(clock), clock)
        hub.webhooks = told = RecordingEvents()
        counted: list[tuple[str, str, int]] = []
        hub.counts = lambda *a: counted.append(a)
        watcher, user = Conn("1", "1.1"), Conn("1", "1.2")
        hub.connect(watcher)
        hub.connect(user)
        self.assertEqual(self.successResultOf(hub.watch(watcher, ["u2"])), [])
        hub.signin(user, "u2")
        self.assertEqual(told.told, [])
        self.assertEqual(counted, [])
        self.assertEqual(
            [m["data"] for m in watcher.events("pusher_internal:watchlist_events")],
            [{"events": [{"name": "online", "user_ids": ["u2"]}]}],
        )
        self.assertNotIn("channel", watcher.events("pusher_internal:watchlist_events")[0])
        other = Conn("1", "1.3")
        hub.connect(other)
        self.assertEqual(self.successResultOf(hub.watch(other, ["u2", "u3"])), ["u2"])
        hub.disconnect(user)
        clock.advance(0)  # the fan-out writes queued frames on the next turn
        self.assertEqual(
            watcher.events("pusher_internal:watchlist_events")[-1]["data"],
            {"events": [{"name": "offline", "user_ids": ["u2"]}]},
        )


class RedisServerEventsTests(RedisTestCase):
    """Watchlist and occupancy across two in-process nodes on the machine's Redis."""

    @inlineCallbacks
    def test_watchlistAcrossNodes(self) -> Any:
        """A watcher on one node hears a user sign in and out on another, once each."""
        a, b = yield self.nodes(2)
        watcher = a.connect("1")
        online = yield a.hub.watch(watcher, ["bob"])
        self.assertEqual(online, [])
        bob = b.connect("1")
        b.hub.signin(bob, "bob")
        event = yield watcher.next("pusher_internal:watchlist_events")
        self.assertEqual(event["data"], {"events": [{"name": "online", "user_ids": ["bob"]}]})
        bob2 = b.connect("1")
        b.hub.signin(bob2, "bob")  # a second connection: no new online
        late = a.connect("1")
        self.assertEqual((yield a.hub.watch(late, ["bob"])), ["bob"])
        b.hub.disconnect(bob)
        b.hub.disconnect(bob2)
        event = yield watcher.next("pusher_internal:watchlist_events")
        self.assertEqual(event["data"], {"events": [{"name": "offline", "user_ids": ["bob"]}]})
        self.assertEqual(watcher.events("pusher_internal:watchlist_events"), [])

    @inlineCallbacks
    def test_occupiedOnceAcrossNodes(self) -> Any:
        """The same channel subscribed on two nodes: occupied once; vacated once, by the node
        whose leave took the cluster count to 0; counts are cluster-wide."""
        a, b = yield self.nodes(2)
        told: list[tuple[Any, ...]] = []
        counted: list[tuple[str, str, int]] = []
        for node in (a, b):
            node.hub.webhooks = events = RecordingEvents()
            events.told = told
            node.hub.counts = lambda *args: counted.append(args)
        ca, cb = a.connect("1"), b.connect("1")
        yield a.subscribe(ca, "private-x")
        yield b.subscribe(cb, "private-x")
        self.assertEqual(told, [("occupied", "private-x")])
        self.assertEqual([c[2] for c in counted], [1, 2])
        a.hub.disconnect(ca)
        yield a.state.counted("1", "private-x")
        b.hub.disconnect(cb)
        yield b.state.counted("1", "private-x")
        self.assertEqual(told, [("occupied", "private-x"), ("vacated", "private-x")])
        self.assertEqual([c[2] for c in counted], [1, 2, 1, 0])


class CacheInfoTests(LiveCase):
    """C{info=cache} on a cache channel's info, through the official Python SDK."""

    @inlineCallbacks
    def test_infoCache(self) -> Any:
        """The kept event, its data and the seconds left (at most 30 minutes) are answered;
        nothing kept: no cache key; a channel that is no cache channel: 400."""
        from twisted.internet.threads import deferToThread

        receiver = Receiver()
        proc, port = self.start(listenReceiver(self, receiver))
        yield proc.waitFor("message store ready")
        sdk = pusher.Pusher(
            app_id=self.app.id,
            key=self.app.key,
            secret=self.app.secret,
            host="127.0.0.1",
            port=port,
            ssl=False,
        )
        empty = yield deferToThread(sdk.channel_info, "cache-price", ["cache"])
        self.assertEqual(empty, {"occupied": False})
        yield deferToThread(sdk.trigger, "cache-price", "update", {"p": 3})
        info = yield deferToThread(sdk.channel_info, "cache-price", ["cache"])
        self.assertEqual(info["cache"]["event"], "update")
        self.assertEqual(json.loads(info["cache"]["data"]), {"p": 3})
        self.assertTrue(1790 <= info["cache"]["ttl"] <= 1800, info)
        error = yield deferToThread(sdk.channel_info, "news", ["cache"]).addErrback(
            lambda f: f.value
        )
        self.assertIsInstance(error, pusher.errors.PusherBadRequest)
        self.assertIn("info=cache is for cache channels only", str(error))
