"""
The whole service in this process on real loopback ports: the official Pusher server SDK
publishes, real WebSocket clients receive, the chat and the webhook publish through the same hub.
"""

from __future__ import annotations

import gc
import hashlib
import hmac
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pusher
import pusher.errors
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks, succeed
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from pushsvc.apiauth import apiSignature, bodyMd5
from pushsvc.service import PushService, ServiceConfig
from pushsvc.signing import userAuth
from tests.helpers import captureLogs, portOf
from tests.wsclient import PATH, WSClient, connectClient, subscribeClient

APP_ID, APP_KEY, SECRET = "4242", "integration-key", "integration-secret"


class ServiceCase(TestCase):
    """The whole service on a loopback port, with helpers to connect and subscribe."""

    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]  # trial waits on a Deferred
        config = ServiceConfig(
            listen=("tcp:0:interface=127.0.0.1",),
            dataDir=Path(self.mktemp()),
            appId=APP_ID,
            appKey=APP_KEY,
            environ={"PUSHSVC_APP_SECRET": SECRET},
            adminListen="tcp:0:interface=127.0.0.1",
        )
        self.service = PushService(config, reactor)
        self.service.startService()
        self.port = portOf(self.service.ports[0])
        self.base = f"http://127.0.0.1:{self.port}"
        self.http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        self.clients: list[WSClient] = []
        self.addCleanup(self.stop)
        yield self.service.whenReady()

    @inlineCallbacks
    def stop(self) -> Any:
        if self.service.running:
            yield self.service.stopService()
        for c in self.clients:
            if not c.closed.called:
                c.transport.abortConnection()  # type: ignore[union-attr]  # connected: transport is set
            yield c.closed

    def sdk(self, secret: str = SECRET) -> pusher.Pusher:
        return pusher.Pusher(
            app_id=APP_ID, key=APP_KEY, secret=secret, host="127.0.0.1", port=self.port, ssl=False
        )

    @inlineCallbacks
    def connect(self) -> Any:
        client = yield connectClient(self.port, PATH.format(key=APP_KEY), established=False)
        self.clients.append(client)
        yield client.expect("pusher:connection_established")
        return client

    def subscribe(self, client: WSClient, channel: str, channelData: str | None = None) -> Any:
        return subscribeClient(self.service.apps.default, client, channel, channelData)


class ServiceTests(ServiceCase):
    @inlineCallbacks
    def test_sdkPublishReachesSubscribers(self) -> Any:
        """
        Events triggered with the official SDK (single, several channels, batch) reach every
        WebSocket subscriber; socket_id excludes its connection; data arrives unchanged.
        """
        a = yield self.connect()
        b = yield self.connect()
        for c in (a, b):
            yield self.subscribe(c, "news")
            yield self.subscribe(c, "private-orders")
        client = self.sdk()
        yield deferToThread(client.trigger, ["news", "private-orders"], "created", {"n": 1})
        for c in (a, b):
            for channel in ("news", "private-orders"):
                msg = yield c.expect("created", channel)
                self.assertEqual(json.loads(msg["data"]), {"n": 1})
        yield deferToThread(client.trigger, "news", "skip-a", "plain", socket_id=a.socketId)
        yield deferToThread(
            client.trigger_batch,
            [
                {"channel": "news", "name": "batch-1", "data": "one"},
                {"channel": "private-orders", "name": "batch-2", "data": "two"},
            ],
        )
        msg = yield b.expect("skip-a", "news")
        self.assertEqual(msg["data"], "plain")
        for c in (a, b):
            self.assertEqual((yield c.expect("batch-1", "news"))["data"], "one")
            self.assertEqual((yield c.expect("batch-2", "private-orders"))["data"], "two")
        # Everything published before batch-2 has arrived at a by now: skip-a never did.
        self.assertEqual(a.matching("skip-a"), [])

    @inlineCallbacks
    def test_sdkQueries(self) -> Any:
        """Channel info, the channels list and the users list answer what is subscribed."""
        a = yield self.connect()
        b = yield self.connect()
        yield self.subscribe(a, "news")
        yield self.subscribe(b, "news")
        for c, user in ((a, "u1"), (b, "u2")):
            yield self.subscribe(c, "presence-lobby", json.dumps({"user_id": user}))
        client = self.sdk()
        info = yield deferToThread(client.channel_info, "news", ["subscription_count"])
        self.assertEqual(info, {"occupied": True, "subscription_count": 2})
        info = yield deferToThread(client.channel_info, "presence-lobby", ["user_count"])
        self.assertEqual(info["user_count"], 2)
        empty = yield deferToThread(client.channel_info, "nobody-here")
        self.assertEqual(empty["occupied"], False)
        listing = yield deferToThread(client.channels_info)
        self.assertEqual(set(listing["channels"]), {"news", "presence-lobby"})
        users = yield deferToThread(client.users_info, "presence-lobby")
        self.assertEqual(sorted(u["id"] for u in users["users"]), ["u1", "u2"])

    @inlineCallbacks
    def test_sdkTerminate(self) -> Any:
        """The SDK's terminate_user_connections closes that user's signed-in connection."""
        a = yield self.connect()
        b = yield self.connect()
        userData = json.dumps({"id": "ann"})
        a.sendJSON(
            "pusher:signin",
            {
                "user_data": userData,
                "auth": userAuth(self.service.apps.default, a.socketId, userData),
            },
        )
        yield a.expect("pusher:signin_success")
        yield deferToThread(self.sdk().terminate_user_connections, "ann")
        code = yield a.closed
        self.assertEqual(code, 4009)
        yield b.roundTrip()
        self.assertFalse(b.closed.called)

    @inlineCallbacks
    def test_wrongSecret(self) -> Any:
        """A publish signed with the wrong secret gets 401 and reaches nobody."""
        a = yield self.connect()
        yield self.subscribe(a, "news")
        with self.assertRaises(pusher.errors.PusherBadAuth):
            yield deferToThread(self.sdk("not-the-secret").trigger, "news", "evil", "x")
        yield deferToThread(self.sdk().trigger, "news", "good", "y")
        yield a.expect("good", "news")
        self.assertEqual(a.matching("evil"), [])

    @inlineCallbacks
    def test_notifyWebhook(self) -> Any:
        """The curl-friendly signed webhook publishes to subscribers; a bad signature is 401."""
        a = yield self.connect()
        yield self.subscribe(a, "doc-7")
        body = json.dumps({"event": "changed", "data": {"rev": 3}}).encode()
        ts = str(int(time.time()))
        sig = hmac.new(SECRET.encode(), ts.encode() + b".doc-7." + body, hashlib.sha256).hexdigest()
        bad = yield self.http.post(
            f"{self.base}/notify/doc-7",
            data=body,
            headers=Headers(
                {"X-Pushsvc-Timestamp": [ts], "X-Pushsvc-Signature": ["sha256=" + "0" * 64]}
            ),
        )
        self.assertEqual(bad.code, 401)
        yield bad.content()
        ok = yield self.http.post(
            f"{self.base}/notify/doc-7",
            data=body,
            headers=Headers(
                {"X-Pushsvc-Timestamp": [ts], "X-Pushsvc-Signature": ["sha256=" + sig]}
            ),
        )
        self.assertEqual(ok.code, 202, (yield ok.text()))
        again = yield self.http.post(
            f"{self.base}/notify/doc-7",
            data=body,
            headers=Headers(
                {"X-Pushsvc-Timestamp": [ts], "X-Pushsvc-Signature": ["sha256=" + sig]}
            ),
        )
        self.assertEqual(again.code, 409)
        self.assertIn("error", (yield again.json()))
        msg = yield a.expect("changed", "doc-7")
        self.assertEqual(json.loads(msg["data"]), {"rev": 3})
        self.assertEqual(a.matching("changed"), [msg])

    @inlineCallbacks
    def test_chatMessageAnnounced(self) -> Any:
        """A chat message is stored, answered 201 and announced on the room's presence channel."""
        a = yield self.connect()
        yield self.subscribe(a, "presence-room-general", json.dumps({"user_id": "watcher"}))
        session = yield self.http.post(f"{self.base}/api/session", json={"name": "Ann"})
        cookies = session.cookies()
        yield session.content()
        posted = yield self.http.post(
            f"{self.base}/api/rooms/general/messages", json={"text": "hello"}, cookies=cookies
        )
        self.assertEqual(posted.code, 201)
        message = yield posted.json()
        msg = yield a.expect("message", "presence-room-general")
        self.assertEqual(json.loads(msg["data"]), message)

    @inlineCallbacks
    def test_signOutOnEveryProcess(self) -> Any:
        """
        Over real sockets and the SQLite file: a session signed out on one process is refused
        (401) by another process sharing the SQLite file and the session key (with a data dir of
        its own: a data dir is locked by the process using it). That process allows one
        message a minute: the second gets 429 with Retry-After.
        """
        first = self.service.config.dataDir.resolve()
        other = PushService(
            replace(
                self.service.config,
                chatMessagesPerMinute=1,
                dataDir=Path(self.mktemp()),
                storeURL=f"sqlite:{first / 'pushsvc.sqlite3'}",
                sessionKeyFile=first / "session-key",
            ),
            reactor,
        )
        other.startService()
        self.addCleanup(other.stopService)
        yield other.whenReady()
        otherBase = f"http://127.0.0.1:{portOf(other.ports[0])}"
        session = yield self.http.post(f"{self.base}/api/session", json={"name": "Ann"})
        cookies = session.cookies()
        yield session.content()
        codes = []
        for i in range(2):
            posted = yield self.http.post(
                f"{otherBase}/api/rooms/general/messages", json={"text": f"m{i}"}, cookies=cookies
            )
            codes.append(posted.code)
            yield posted.content()
        self.assertEqual(codes, [201, 429])
        (retry,) = posted.headers.getRawHeaders(b"retry-after")
        self.assertTrue(50 <= int(retry) <= 60, retry)
        me = yield self.http.get(f"{otherBase}/api/session", cookies=cookies)
        self.assertEqual(me.code, 200)
        yield me.content()
        out = yield self.http.delete(f"{self.base}/api/session", cookies=cookies)
        self.assertEqual(out.code, 200)
        yield out.content()
        for base in (self.base, otherBase):
            me = yield self.http.get(f"{base}/api/session", cookies=cookies)
            self.assertEqual(me.code, 200)
            self.assertEqual((yield me.json()), {"signed_in": False})

    @inlineCallbacks
    def test_pusherAuthForm(self) -> Any:
        """
        pusher-js's auth request (a form body, which the site leaves to the endpoint) signs the
        page's room subscription, and that signature subscribes a real connection.
        """
        a = yield self.connect()
        session = yield self.http.post(f"{self.base}/api/session", json={"name": "Ann"})
        cookies = session.cookies()
        yield session.content()
        answer = yield self.http.post(
            f"{self.base}/api/pusher/auth",
            data=f"socket_id={a.socketId}&channel_name=presence-room-general".encode(),
            headers=Headers(
                {b"Content-Type": [b"application/x-www-form-urlencoded; charset=UTF-8"]}
            ),
            cookies=cookies,
        )
        self.assertEqual(answer.code, 200)
        body = yield answer.json()
        a.sendJSON(
            "pusher:subscribe",
            {
                "channel": "presence-room-general",
                "auth": body["auth"],
                "channel_data": body["channel_data"],
            },
        )
        ok = yield a.expect("pusher_internal:subscription_succeeded", "presence-room-general")
        self.assertEqual(ok["data"]["presence"]["count"], 1)

    @inlineCallbacks
    def test_healthAndMetrics(self) -> Any:
        a = yield self.connect()
        yield self.subscribe(a, "news")
        health = yield self.http.get(f"{self.base}/healthz")
        self.assertEqual((health.code, (yield health.json())), (200, {"status": "ok"}))
        assert self.service.adminPort is not None
        admin = f"http://127.0.0.1:{portOf(self.service.adminPort)}"
        health = yield self.http.get(f"{admin}/healthz")
        body = yield health.json()
        self.assertEqual((health.code, body["status"], body["store"]), (200, "ok", "ok"))
        metrics = yield self.http.get(f"{admin}/metrics")
        text = yield metrics.text()
        self.assertIn(f'pushsvc_connections{{app_id="{APP_ID}"}} 1.0', text)
        self.assertIn(f'pushsvc_subscriptions{{app_id="{APP_ID}"}} 1.0', text)
        # The reactor is timed from start, and start-up ended with gc.freeze() (store open).
        for name in ("pushsvc_reactor_stall_seconds_bucket", "pushsvc_gc_pause_seconds_count"):
            self.assertIn(name, text)
        self.assertIn("pushsvc_reactor_stall_longest_seconds", text)
        self.assertTrue(self.service.reactorMeter.frozen)

    @inlineCallbacks
    def test_connectionLeavesNoCycles(self) -> Any:
        """
        A WebSocket connection (its upgrade request, its life, its close) leaves no cycle on the
        server side: what it used is freed by reference counting, without the collector.
        """
        gc.disable()  # no automatic collection frees a cycle before it is looked for
        self.addCleanup(gc.enable)
        gc.collect()
        a = yield self.connect()
        yield self.subscribe(a, "news")
        a.transport.loseConnection()
        yield a.closed
        yield self.service.registry.whenIdle()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            left = sorted(
                type(o).__name__
                for o in gc.garbage
                if type(o).__name__
                in ("PushServerProtocol", "Outbound", "BoundedHTTPChannel", "PushRequest", "Server")
            )
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        self.assertEqual(left, [])

    @inlineCallbacks
    def test_gracefulStop(self) -> Any:
        """Stopping the service tells connected clients to reconnect (4200) and closes the store."""
        a = yield self.connect()
        yield self.service.stopService()
        code = yield a.closed
        self.assertEqual(code, 4200)


@implementer(IBodyProducer)
class ChunkedBody:
    """A request body of unknown length (sent chunked): C{count} times C{chunk}."""

    length = UNKNOWN_LENGTH

    def __init__(self, chunk: bytes, count: int) -> None:
        self.chunk = chunk
        self.count = count

    def startProducing(self, consumer: Any) -> Any:
        for _ in range(self.count):
            consumer.write(self.chunk)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class HostileHTTPTests(ServiceCase):
    """Requests that must get a clear JSON error and leave the service as it was."""

    @inlineCallbacks
    def test_hugeBodyRefusedWhileArriving(self) -> Any:
        """A body over the server-wide cap is answered 413 JSON, declared or chunked."""
        big = b"x" * (2 * 1024 * 1024)
        for path in ("/notify/x", "/api/rooms/general/messages", f"/apps/{APP_ID}/events"):
            response = yield self.http.post(self.base + path, data=big)
            self.assertEqual(response.code, 413, path)
            self.assertIn("error", (yield response.json()))

            response = yield self.http.post(self.base + path, data=ChunkedBody(b"y" * 65536, 40))
            self.assertEqual(response.code, 413, path)
            yield response.content()
        health = yield self.http.get(self.base + "/healthz")
        self.assertEqual(health.code, 200)
        yield health.content()

    @inlineCallbacks
    def test_nestedJSON(self) -> Any:
        """
        JSON nested thousands deep to /api/session, /notify and /apps/{id}/events (signed, so
        it reaches the decoder) is 400 with a JSON error and at most one log line each (the
        access log): no traceback, nothing at warning level or above.
        """
        events = captureLogs(self)
        deep = b"[" * 4000 + b"]" * 4000
        ts = str(int(time.time()))
        notifySig = hmac.new(
            SECRET.encode(), ts.encode() + b".x." + deep, hashlib.sha256
        ).hexdigest()
        params = {
            "auth_key": APP_KEY,
            "auth_timestamp": ts,
            "auth_version": "1.0",
            "body_md5": bodyMd5(deep),
        }
        params["auth_signature"] = apiSignature(SECRET, "POST", f"/apps/{APP_ID}/events", params)
        requests = [
            # 2,000 deep: 4,000 deep is over the 4 KiB that /api/session reads (a 413)
            (
                "/api/session",
                b"[" * 2000 + b"]" * 2000,
                Headers({"Content-Type": ["application/json"]}),
            ),
            (
                "/notify/x",
                deep,
                Headers(
                    {"X-Pushsvc-Timestamp": [ts], "X-Pushsvc-Signature": ["sha256=" + notifySig]}
                ),
            ),
            (
                f"/apps/{APP_ID}/events?" + urlencode(params),
                deep,
                Headers({"Content-Type": ["application/json"]}),
            ),
        ]
        # What one request that is plain bad JSON logs (its access log line, and this test's
        # client factory coming and going), to compare with.
        before = len(events)
        response = yield self.http.post(
            self.base + "/api/session",
            data=b"{",
            headers=Headers({"Content-Type": ["application/json"]}),
        )
        self.assertEqual(response.code, 400)
        yield response.content()
        usual = len(events) - before
        for path, body, headers in requests:
            before = len(events)
            response = yield self.http.post(self.base + path, data=body, headers=headers)
            reply = yield response.json()
            self.assertEqual(response.code, 400, (path, reply))
            self.assertIn("nested deeper than 32 levels", reply["error"])
            self.assertLessEqual(
                len(events) - before, usual, [e.get("log_format") for e in events[before:]]
            )
        loud = [
            e
            for e in events
            if e.get("log_level") in (LogLevel.warn, LogLevel.error, LogLevel.critical)
        ]
        self.assertEqual(loud, [])

    @inlineCallbacks
    def test_oddPaths(self) -> Any:
        """NUL bytes, API folders and plain GETs of the WebSocket get JSON or a bare refusal."""
        for path in ("/app.js%00", "/api", "/api/pusher", "/api/pusher/x", "/nothing"):
            response = yield self.http.get(self.base + path)
            self.assertEqual(response.code, 404, path)
            self.assertIn("error", (yield response.json()))
        response = yield self.http.get(f"{self.base}/app/{APP_KEY}?protocol=7")
        body = yield response.text()
        self.assertNotEqual(response.code, 200)
        self.assertNotIn("autobahn", body.lower())
