"""
Several apps in one process, each with its own limits (issue 13): fast tests on the in-memory
WebSocket side (L{tests.fakews.FakeClient}, C{task.Clock}) and on the HTTP API (C{StubTreq}).
"""

from __future__ import annotations

import json
from typing import Any, cast

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.test.requesthelper import DummyRequest

from pushsvc import frames
from pushsvc.apps import App, Apps
from pushsvc.appsfile import diffApps
from pushsvc.appstats import AppStats
from pushsvc.fanout.registry import Registry
from pushsvc.health import MetricsResource
from pushsvc.hub import Hub
from pushsvc.interfaces import PushSettings
from pushsvc.local import LocalBroker
from pushsvc.signing import channelAuth, userAuth
from pushsvc.testing import FakeHub
from pushsvc.ws.protocol import makeAppFactory
from tests.fakews import FakeClient
from tests.test_api import NOW, makeRoot, signedURL

ONE = App("1", "key-one", "secret-one", maxConnections=2, maxPresenceMembers=100)
TWO = App(
    "2",
    "key-two",
    "secret-two",
    maxSubscriptionsPerConnection=3,
    maxClientEventsPerSecond=2,
    userAuthenticationTimeout=5.0,
)
OFF = App("3", "key-off", "secret-off", enabled=False)


def path(app: App) -> str:
    return f"/app/{app.key}?protocol=7&client=js&version=8.6.0"


def presence(userId: str) -> str:
    return json.dumps({"user_id": userId, "user_info": {"n": userId}})


class AppsInMemoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.settings = PushSettings()
        self.registry = Registry(self.settings, self.clock)
        self.hub = Hub(self.registry, LocalBroker(self.clock), self.clock)
        self.apps = Apps([ONE, TWO, OFF])
        self.factory = makeAppFactory(self.apps, self.hub, self.registry, self.clock, self.settings)
        self.factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)

    def connect(self, app: App = ONE) -> FakeClient:
        return FakeClient(self.factory, path(app))

    def subscribe(
        self, client: FakeClient, channel: str, app: App, channelData: str | None = None
    ) -> list[dict[str, Any]]:
        data: dict[str, Any] = {"channel": channel}
        if frames.needsAuth(channel):
            data["auth"] = channelAuth(app, client.socketId, channel, channelData)
        if channelData is not None:
            data["channel_data"] = channelData
        return client.send("pusher:subscribe", data)

    def publish(self, app: App, channel: str, data: str) -> None:
        self.successResultOf(self.hub.publish(app, [channel], "ev", data))
        self.clock.advance(0)

    def test_isolation(self) -> None:
        """
        Two apps with a channel of the same name: a publish to one reaches only its own
        subscribers, and each app's channel counts and presence members are its own.
        """
        a, b = self.connect(ONE), self.connect(TWO)
        self.subscribe(a, "news", ONE)
        self.subscribe(b, "news", TWO)
        self.subscribe(a, "presence-room", ONE, presence("alice"))
        self.subscribe(b, "presence-room", TWO, presence("bob"))
        self.publish(ONE, "news", "for one")
        self.publish(TWO, "news", "for two")
        self.assertEqual([m["data"] for m in a.events("ev")], ["for one"])
        self.assertEqual([m["data"] for m in b.events("ev")], ["for two"])
        self.assertEqual(list(self.registry.members("1", "presence-room")), ["alice"])
        self.assertEqual(list(self.registry.members("2", "presence-room")), ["bob"])
        self.assertEqual(a.events("pusher_internal:member_added"), [])
        # A signature made with the other app's secret is refused.
        wrong = b.send(
            "pusher:subscribe",
            {"channel": "private-x", "auth": channelAuth(ONE, b.socketId, "private-x")},
        )
        self.assertEqual(wrong[0]["event"], "pusher:subscription_error")

    def test_disabled(self) -> None:
        """A disabled app's connection gets pusher:error 4003 and a close with 4003."""
        client = self.connect(OFF)
        self.assertEqual(client.messages[0]["data"]["code"], 4003)
        self.assertEqual(client.closeCode, 4003)
        self.assertEqual(self.factory.appStats.of("3").refusedDisabled, 1)

    def test_maxConnections(self) -> None:
        """
        Over max_connections the connection gets 4004; other apps are not limited by it, and a
        place freed by a closed connection is taken again.
        """
        first, second = self.connect(ONE), self.connect(ONE)
        third = self.connect(ONE)
        self.assertEqual(
            third.messages[0],
            {
                "event": "pusher:error",
                "data": {"code": 4004, "message": "over the app's connection quota"},
            },
        )
        self.assertEqual(third.closeCode, 4004)
        self.assertIsNone(first.closeCode)
        self.assertIsNone(second.closeCode)
        for _ in range(3):
            self.assertIsNone(self.connect(TWO).closeCode)
        first.disconnect()
        self.assertEqual(self.connect(ONE).messages[0]["event"], "pusher:connection_established")
        counters = self.factory.appStats.of("1")
        self.assertEqual((counters.connections, counters.refusedOverQuota), (2, 1))

    def test_maxConnectionsCountsOtherNodes(self) -> None:
        """With another node's count of the app (the cluster state), the quota is shared."""
        self.hub.state.connectionsElsewhere = lambda appId: 1 if appId == "1" else 0  # type: ignore[method-assign]
        self.assertIsNone(self.connect(ONE).closeCode)
        self.assertEqual(self.connect(ONE).closeCode, 4004)

    def test_presenceMembers(self) -> None:
        """
        The member after max_presence_members gets pusher:subscription_error; a user already
        present may open another connection; a freed place can be taken.
        """
        app = App("9", "key-nine", "secret-nine", maxPresenceMembers=100)
        self.apps.replace([*self.apps, app])
        clients = [self.connect(app) for _ in range(101)]
        for i, client in enumerate(clients[:100]):
            reply = self.subscribe(client, "presence-big", app, presence(f"u{i}"))
            self.assertEqual(reply[0]["event"], "pusher_internal:subscription_succeeded")
        refused = self.subscribe(clients[100], "presence-big", app, presence("u100"))
        self.assertEqual(refused[0]["event"], "pusher:subscription_error")
        self.assertEqual(refused[0]["data"]["type"], "LimitReached")
        self.assertEqual(refused[0]["data"]["status"], 403)
        self.assertEqual(len(self.registry.members("9", "presence-big")), 100)
        again = self.connect(app)
        reply = self.subscribe(again, "presence-big", app, presence("u5"))
        self.assertEqual(reply[0]["event"], "pusher_internal:subscription_succeeded")
        clients[0].disconnect()
        reply = self.subscribe(clients[100], "presence-big", app, presence("u100"))
        self.assertEqual(reply[0]["event"], "pusher_internal:subscription_succeeded")

    def test_presenceJoinWaiting(self) -> None:
        """
        While a presence join waits for its member count (a Redis round trip with --redis): a
        connection that goes, or unsubscribes, is not subscribed when the count comes, and the
        pending join counts toward the subscription limit.
        """
        pending: list[Deferred[dict[str, Any]]] = []

        def members(appId: str, channel: str) -> Deferred[dict[str, Any]]:
            pending.append(Deferred())
            return pending[-1]

        self.hub.presenceMembers = members  # type: ignore[method-assign]
        gone, leaving, busy = self.connect(TWO), self.connect(TWO), self.connect(TWO)
        self.assertEqual(self.subscribe(gone, "presence-a", TWO, presence("g")), [])
        gone.disconnect()
        self.subscribe(leaving, "presence-a", TWO, presence("l"))
        leaving.send("pusher:unsubscribe", {"channel": "presence-a"})
        for i in range(3):  # TWO allows 3 subscriptions a connection
            self.subscribe(busy, f"presence-{i}", TWO, presence("b"))
        refused = self.subscribe(busy, "news", TWO)
        self.assertEqual(refused[0]["data"]["type"], "LimitReached")
        for d in pending:
            d.callback({})
        self.assertEqual(self.registry.members("2", "presence-a"), {})
        self.assertEqual(self.registry.channelsOf(leaving.protocol), [])
        self.assertEqual(self.factory.appStats.of("2").subscriptions, 3)  # busy's only
        self.assertEqual(
            sorted(m["channel"] for m in busy.events("pusher_internal:subscription_succeeded")),
            ["presence-0", "presence-1", "presence-2"],
        )

    def test_channelNameLength(self) -> None:
        """A 165-character channel name is refused; 164 is accepted."""
        client = self.connect(ONE)
        refused = self.subscribe(client, "c" * 165, ONE)
        self.assertEqual(refused[0]["event"], "pusher:subscription_error")
        self.assertIn("164", refused[0]["data"]["error"])
        ok = self.subscribe(client, "c" * 164, ONE)
        self.assertEqual(ok[0]["event"], "pusher_internal:subscription_succeeded")

    def test_subscriptionsPerConnection(self) -> None:
        """max_subscriptions_per_connection of the app applies (3 here)."""
        client = self.connect(TWO)
        client.send("pusher:signin", self.signin(client, TWO, "u"))
        for i in range(3):
            self.subscribe(client, f"c{i}", TWO)
        refused = self.subscribe(client, "c3", TWO)
        self.assertEqual(refused[0]["data"]["type"], "LimitReached")

    def signin(self, client: FakeClient, app: App, userId: str) -> dict[str, str]:
        userData = json.dumps({"id": userId})
        return {"auth": userAuth(app, client.socketId, userData), "user_data": userData}

    def test_clientEventRate(self) -> None:
        """Over the app's max_client_events_per_second: pusher:error 4301."""
        client = self.connect(TWO)
        client.send("pusher:signin", self.signin(client, TWO, "u"))
        self.subscribe(client, "private-chat", TWO)
        replies = [client.send("client-typing", {}, "private-chat") for _ in range(3)]
        self.assertEqual(replies[:2], [[], []])
        self.assertEqual(replies[2][0]["data"]["code"], 4301)
        self.assertEqual(self.factory.appStats.of("2").clientEventsRateLimited, 1)

    def test_userAuthenticationTimeout(self) -> None:
        """
        With user_authentication_timeout, a connection not signed in by then is closed with
        4009; one that signed in is not; another app's connections have no such timer.
        """
        lazy, busy, other = self.connect(TWO), self.connect(TWO), self.connect(ONE)
        reply = busy.send("pusher:signin", self.signin(busy, TWO, "u1"))
        self.assertEqual(reply[0]["event"], "pusher:signin_success")
        self.clock.advance(4.9)
        self.assertIsNone(lazy.closeCode)
        self.clock.advance(0.2)
        self.assertEqual(lazy.closeCode, 4009)
        self.assertEqual(lazy.events("pusher:error")[0]["data"]["code"], 4009)
        self.assertIsNone(busy.closeCode)
        self.assertIsNone(other.closeCode)
        lazy.disconnect()
        busy.disconnect()
        self.assertEqual(self.authTimers(), [])

    def authTimers(self) -> list[Any]:
        return [
            c
            for c in self.clock.getDelayedCalls()
            if getattr(getattr(c, "func", None), "__name__", "") == "_notSignedIn"
        ]

    def test_timerCancelledOnClose(self) -> None:
        """A connection that goes before the timeout leaves no timer behind."""
        client = self.connect(TWO)
        self.assertEqual(len(self.authTimers()), 1)
        client.disconnect()
        self.assertEqual(self.authTimers(), [])

    def test_reload(self) -> None:
        """
        A reload closes the connections of a removed app with 4001 and of a disabled one with
        4003; a rotated secret is used for new signatures at once; an untouched app's
        connection gets nothing at all and keeps receiving; an added app works at once.
        """
        three = App("4", "key-four", "secret-four")
        self.apps.replace([*self.apps, three])
        keep, gone, off, rotated = (self.connect(a) for a in (ONE, TWO, three, ONE))
        self.subscribe(keep, "news", ONE)
        before = len(keep.messages)
        added = App("5", "key-five", "secret-five")
        newOne = App("1", "key-one", "rotated-secret", maxConnections=2)
        newThree = App("4", "key-four", "secret-four", enabled=False)
        new = [newOne, OFF, newThree, added]
        diff = diffApps(list(self.apps), new)
        self.apps.replace(new)
        self.assertEqual(self.factory.closeApps(dict(diff.close)), 2)
        self.assertEqual(gone.closeCode, 4001)
        self.assertEqual(off.closeCode, 4003)
        self.assertEqual(gone.events("pusher:error")[0]["data"]["code"], 4001)
        self.assertIsNone(keep.closeCode)
        self.assertEqual(len(keep.messages), before)
        self.publish(newOne, "news", "still here")
        self.assertEqual([m["data"] for m in keep.events("ev")], ["still here"])
        # The rotated secret signs from now on, on the connection opened before the reload.
        old = self.subscribe(rotated, "private-a", ONE)
        self.assertEqual(old[0]["event"], "pusher:subscription_error")
        ok = self.subscribe(rotated, "private-a", newOne)
        self.assertEqual(ok[0]["event"], "pusher_internal:subscription_succeeded")
        self.assertEqual(self.connect(added).messages[0]["event"], "pusher:connection_established")
        self.assertEqual(self.connect(TWO).closeCode, 4001)

    def test_metrics(self) -> None:
        """The per-app series carry an app_id label, with HELP and TYPE once per name."""
        self.connect(ONE)
        self.connect(TWO)
        stats: AppStats = self.factory.appStats
        page = MetricsResource(stats.metrics).render_GET(cast(Any, DummyRequest([]))).decode()
        self.assertIn('pushsvc_app_connections{app_id="1"} 1', page)
        self.assertIn('pushsvc_app_connections{app_id="2"} 1', page)
        self.assertEqual(page.count("# TYPE pushsvc_app_connections gauge"), 1)


class ApiLimitTests(TestCase):
    def setUp(self) -> None:
        self.now = float(NOW)
        self.limited = App("7", "key-seven", "secret-seven", maxApiRequestsPerSecond=2)
        self.short = App("8", "key-eight", "secret-eight", maxChannelNameLength=10)
        self.apps = Apps([self.limited, self.short])
        self.hub = FakeHub()
        self.treq: Any = StubTreq(makeRoot(self.apps, self.hub, lambda: self.now))

    @inlineCallbacks
    def post(self, app: App, channel: str = "news") -> Any:
        body = json.dumps({"name": "ev", "data": "x", "channel": channel}).encode()
        url = signedURL("POST", f"/apps/{app.id}/events", body, app=app, ts=int(self.now))
        response = yield self.treq.post(url, data=body)
        content = yield response.content()
        return response.code, json.loads(content)

    @inlineCallbacks
    def test_rateLimit(self) -> Any:
        """
        Over max_api_requests_per_second: 429 with a JSON error body; another app is not
        affected; the next second, requests are accepted again.
        """
        codes = []
        for _ in range(3):
            code, body = yield self.post(self.limited)
            codes.append(code)
        self.assertEqual(codes, [200, 200, 429])
        self.assertIn("API requests a second", body["error"])
        for _ in range(3):
            code, _ = yield self.post(self.short)
            self.assertEqual(code, 200)
        self.now += 1.0
        code, _ = yield self.post(self.limited)
        self.assertEqual(code, 200)
        self.assertEqual(len(self.hub.published), 6)

    @inlineCallbacks
    def test_channelNameLength(self) -> Any:
        """A publish to a channel longer than the app's max_channel_name_length is a 400."""
        code, body = yield self.post(self.short, "c" * 11)
        self.assertEqual(code, 400)
        self.assertIn("at most 10 characters", body["error"])
        code, _ = yield self.post(self.short, "c" * 10)
        self.assertEqual(code, 200)

    @inlineCallbacks
    def test_terminateWithoutAppId(self) -> Any:
        """
        The SDK's /users/{id}/terminate_connections (no app id in the path) acts on the app
        whose key signed it, not the first app; isolation: nothing of the other app is touched.
        """
        url = signedURL("POST", "/users/u1/terminate_connections", app=self.short, ts=NOW)
        response = yield self.treq.request("POST", url)
        self.assertEqual(response.code, 200)
        self.assertEqual(self.hub.terminated, [(self.short, "u1")])
