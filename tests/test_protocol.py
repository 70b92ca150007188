"""
The WebSocket side (protocol, hub, registry): fast in-memory tests on a fake transport and
C{task.Clock}, then integration tests with real Autobahn clients on a loopback port.
"""

from __future__ import annotations

import json
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface.verify import verifyObject

from pushsvc import frames
from pushsvc import hub as hub_module
from pushsvc.apps import App, Apps
from pushsvc.fanout.registry import Registry
from pushsvc.hub import Hub
from pushsvc.interfaces import IBroker, IHub, PushSettings
from pushsvc.local import LocalBroker
from pushsvc.signing import channelAuth, userAuth
from pushsvc.ws.protocol import makeAppFactory, makeAppResource
from tests.fakews import FakeClient, maskedFrame
from tests.helpers import listenLocal
from tests.wsclient import WSClient, connectClient, subscribeClient

APP = App("1", "278d425bdf160c739803", "7ad3773142a6692b25b8")
OTHER = App("2", "other-key", "other-secret")
DISABLED = App("3", "disabled-key", "s3", enabled=False)
PATH = f"/app/{APP.key}?protocol=7&client=js&version=8.6.0&flash=false"


def presenceData(userId: Any, info: Any = None) -> str:
    return json.dumps({"user_id": userId, "user_info": info})


class LinkBroker(LocalBroker):
    """An in-process broker whose link to the other nodes a test can cut and restore."""

    def __init__(self) -> None:
        super().__init__()
        self.healthy = True
        self.status = "ok"
        self._listener: Any = None

    def setHealthListener(self, listener: Any) -> None:
        self._listener = listener

    def cut(self) -> None:
        self.healthy, self.status = False, "redis unreachable: connection lost"
        self.linked = False
        self._listener(False)

    def restore(self) -> None:
        self.healthy, self.status = True, "ok"
        self.linked = True
        self._listener(True)


class Server:
    """A registry, hub and factory on a clock, as the service wires them."""

    def __init__(self, clock: Any, broker: LocalBroker | None = None, **settings: Any) -> None:
        self.settings = PushSettings(**settings)
        self.registry = Registry(self.settings, clock)
        self.broker = broker if broker is not None else LocalBroker()
        self.hub = Hub(self.registry, self.broker, clock)
        self.apps = Apps([APP, OTHER, DISABLED])


# -- fast, in memory ---------------------------------------------------------------------------


class InMemoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.make()

    def make(self, broker: LocalBroker | None = None, **settings: Any) -> None:
        self.server = Server(self.clock, broker, **settings)
        self.factory = makeAppFactory(
            self.server.apps,
            self.server.hub,
            self.server.registry,
            self.clock,
            self.server.settings,
        )
        # No Autobahn timers on the global reactor: these tests run on the Clock.
        self.factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)

    def connect(self, path: str = PATH, origin: str | None = None) -> FakeClient:
        return FakeClient(self.factory, path, origin)

    def subscribe(
        self,
        client: FakeClient,
        channel: str,
        channelData: str | None = None,
        app: App = APP,
        auth: str | None = None,
    ) -> list[dict[str, Any]]:
        data: dict[str, Any] = {"channel": channel}
        if frames.needsAuth(channel):
            data["auth"] = auth or channelAuth(app, client.socketId, channel, channelData)
        if channelData is not None:
            data["channel_data"] = channelData
        return client.send("pusher:subscribe", data)

    def publish(
        self, channel: str, event: str = "ev", data: str = "x", exceptSocketId: str | None = None
    ) -> None:
        self.successResultOf(self.server.hub.publish(APP, [channel], event, data, exceptSocketId))
        self.clock.advance(0)  # a reactor turn: the registry writes the fan-out

    # connecting

    def test_connectionEstablished(self) -> None:
        """The first frame carries a socket id A.B and the activity timeout."""
        client = self.connect()
        self.assertEqual(client.status, 101)
        msg = client.messages[0]
        self.assertEqual(msg["event"], "pusher:connection_established")
        self.assertRegex(msg["data"]["socket_id"], r"^\d+\.\d+$")
        self.assertEqual(msg["data"]["activity_timeout"], 120)
        self.assertNotEqual(self.connect().socketId, client.socketId)

    def test_openConnectionCompact(self) -> None:
        """
        An open connection keeps few instance attributes: Autobahn's resting flags and timers
        are read from the class, with the same values, and set on the instance when they change.
        """
        client = self.connect()
        proto = client.protocol
        self.assertLess(len(vars(proto)), 30)
        self.assertNotIn("closedByMe", vars(proto))
        self.assertEqual((proto.closedByMe, proto.localCloseCode), (False, None))
        proto.closeWith(4009, "bye")
        client.read()
        self.assertEqual(client.closeCode, 4009)
        self.assertEqual((vars(proto)["closedByMe"], vars(proto)["localCloseCode"]), (True, 4009))
        self.assertFalse(type(proto).closedByMe)

    def test_refusals(self) -> None:
        """Bad keys, paths and versions get pusher:error then a close with the same code."""
        cases = [
            ("/app/nope?protocol=7", 4001),
            (f"/app/{DISABLED.key}?protocol=7", 4003),
            ("/app/?protocol=7", 4005),
            ("/elsewhere?protocol=7", 4005),
            (f"/app/{APP.key}?protocol=seven", 4006),
            (f"/app/{APP.key}?protocol=4", 4007),
            (f"/app/{APP.key}?protocol=8", 4007),
            (f"/app/{APP.key}", 4008),
        ]
        for path, code in cases:
            client = self.connect(path)
            self.assertEqual(
                client.messages,
                [
                    {
                        "event": "pusher:error",
                        "data": {"code": code, "message": client.messages[0]["data"]["message"]},
                    }
                ],
                path,
            )
            self.assertEqual(client.closeCode, code, path)
        self.assertEqual(self.server.registry.connectionCount, 0)
        for version in (5, 6, 7):
            client = self.connect(f"/app/{APP.key}?protocol={version}")
            self.assertEqual(client.messages[0]["event"], "pusher:connection_established")

    def test_brokerLinkLost(self) -> None:
        """
        When the broker loses its link, every open connection is closed with 4200 (reconnect
        and catch up) and new ones get pusher:error 4100 and a close with 4100 (back off) until
        the link is back; then connections are accepted and served again.
        """
        broker = LinkBroker()
        self.make(broker)
        a, b = self.connect(), self.connect()
        self.subscribe(a, "news")
        broker.cut()
        self.assertEqual((a.closeCode, b.closeCode), (4200, 4200))
        a.disconnect()
        b.disconnect()
        refused = self.connect()
        self.assertEqual([m["event"] for m in refused.messages], ["pusher:error"])
        self.assertEqual(refused.messages[0]["data"]["code"], 4100)
        self.assertEqual(refused.closeCode, 4100)
        self.assertEqual(self.server.registry.connectionCount, 0)
        self.assertEqual(self.server.hub.health(), {"broker": broker.status})

        broker.restore()
        c = self.connect()
        self.assertEqual(c.messages[0]["event"], "pusher:connection_established")
        self.subscribe(c, "news")
        self.publish("news", "ev", "back")
        self.assertEqual(c.events("ev")[0]["data"], "back")
        self.assertIsNone(c.closeCode)

    def test_origins(self) -> None:
        """With allowed origins set, other browser origins are refused in the handshake (403)."""
        self.make(allowedOrigins=("https://good.example",))
        self.assertEqual(self.connect(origin="https://evil.example").status, 403)
        self.assertEqual(self.connect(origin="https://good.example").status, 101)
        self.assertEqual(self.connect().status, 101)  # not a browser: no Origin
        self.make()
        self.assertEqual(self.connect(origin="https://any.example").status, 101)

    def test_ping(self) -> None:
        """pusher:ping is answered with pusher:pong."""
        client = self.connect()
        self.assertEqual(client.send("pusher:ping", {}), [{"event": "pusher:pong", "data": {}}])

    # keep-alive

    def test_idlePingAndNoPongCloses(self) -> None:
        """An idle connection gets a WebSocket ping; one that answers nothing is closed 4201."""
        self.make(pingInterval=30, pongTimeout=10)
        alive, dead = self.connect(), self.connect()
        self.clock.pump([5] * 6)  # t=30
        self.assertEqual((alive.pings, dead.pings), (1, 1))
        alive.pong()
        self.clock.pump([5] * 2)  # t=40: the pong came back in time
        self.assertEqual(dead.closeCode, 4201)
        self.assertIsNone(alive.closeCode)
        self.clock.pump([5] * 4)  # t=60, idle again: pinged again, and it answers again
        self.assertEqual(alive.pings, 2)
        alive.pong()
        self.clock.pump([5] * 4)
        self.assertIsNone(alive.closeCode)
        self.clock.pump([5] * 10)  # this time it answers nothing
        self.assertEqual(alive.closeCode, 4201)

    def test_pongInPiecesOrWithAFrameIsLife(self) -> None:
        """
        A pong split over two reads, or read with a frame after it, is life too (Autobahn parses
        it), and the frames around it are handled as ever.
        """
        self.make(pingInterval=30, pongTimeout=10)
        split, joined = self.connect(), self.connect()
        self.clock.pump([5] * 6)  # t=30: both pinged
        self.assertEqual((split.pings, joined.pings), (1, 1))
        pong = maskedFrame(b"", 0xA)
        split.protocol.dataReceived(pong[:3])
        split.protocol.dataReceived(pong[3:])
        ping = maskedFrame(json.dumps({"event": "pusher:ping", "data": {}}).encode())
        joined.protocol.dataReceived(pong + ping)
        self.assertEqual(joined.read(), [{"event": "pusher:pong", "data": {}}])
        self.clock.pump([5] * 2)  # t=40: both answered in time
        self.assertEqual((split.closeCode, joined.closeCode), (None, None))
        self.assertEqual(split.send("pusher:ping", {}), [{"event": "pusher:pong", "data": {}}])

    def test_anyFrameIsLife(self) -> None:
        """A client that keeps sending frames is never pinged nor closed."""
        self.make(pingInterval=30, pongTimeout=10)
        client = self.connect()
        for _ in range(20):
            self.clock.advance(5)
            client.send("pusher:ping", {})
        client.read()
        self.assertEqual((client.pings, client.closeCode), (0, None))

    # subscribing

    def test_publicSubscribeAndPublish(self) -> None:
        """A public channel needs no auth; a hub.publish reaches its subscribers only."""
        a, b = self.connect(), self.connect()
        self.assertEqual(
            self.subscribe(a, "news"),
            [{"event": "pusher_internal:subscription_succeeded", "channel": "news", "data": {}}],
        )
        self.subscribe(b, "other")
        self.publish("news", "update", '{"n":1}')
        self.assertEqual(a.read(), [{"event": "update", "channel": "news", "data": {"n": 1}}])
        self.assertEqual(b.read(), [])
        a.send("pusher:unsubscribe", {"channel": "news"})
        self.publish("news")
        self.assertEqual(a.read(), [])

    def test_privateAuth(self) -> None:
        """private- and private-encrypted- need the socket's signature; a bad one is AuthError."""
        client = self.connect()
        for channel in ("private-a", "private-encrypted-a"):
            self.assertEqual(
                self.subscribe(client, channel, app=OTHER),
                [
                    {
                        "event": "pusher:subscription_error",
                        "channel": channel,
                        "data": {"type": "AuthError", "error": "invalid signature", "status": 401},
                    }
                ],
            )
            self.assertEqual(
                self.subscribe(client, channel)[0]["event"],
                "pusher_internal:subscription_succeeded",
            )
        other = self.connect()
        stolen = channelAuth(APP, client.socketId, "private-b")
        self.assertEqual(
            self.subscribe(other, "private-b", auth=stolen)[0]["event"], "pusher:subscription_error"
        )
        self.assertEqual(
            other.send("pusher:subscribe", {"channel": "private-c"})[0]["event"],
            "pusher:subscription_error",
        )

    def test_presenceMembers(self) -> None:
        """
        Members are users: two connections of one user give one member_added and one
        member_removed (after both left); the joining socket is never told of itself.
        """
        ann1, bob = self.connect(), self.connect()
        self.subscribe(bob, "presence-room", presenceData("bob", {"name": "Bob"}))
        [succeeded] = self.subscribe(ann1, "presence-room", presenceData("ann", {"name": "Ann"}))
        self.assertEqual(
            succeeded["data"]["presence"],
            {
                "ids": ["bob", "ann"],
                "count": 2,
                "hash": {"bob": {"name": "Bob"}, "ann": {"name": "Ann"}},
            },
        )
        self.assertEqual(
            bob.events("pusher_internal:member_added"),
            [
                {
                    "event": "pusher_internal:member_added",
                    "channel": "presence-room",
                    "data": {"user_id": "ann", "user_info": {"name": "Ann"}},
                }
            ],
        )
        ann2 = self.connect()
        self.subscribe(ann2, "presence-room", presenceData("ann", {"name": "Ann"}))
        self.assertEqual(len(bob.events("pusher_internal:member_added")), 1)
        for c in (ann1, ann2):
            self.assertEqual(c.events("pusher_internal:member_added"), [])
        ann1.disconnect()
        self.assertEqual(bob.events("pusher_internal:member_removed"), [])
        ann2.send("pusher:unsubscribe", {"channel": "presence-room"})
        self.assertEqual(
            bob.events("pusher_internal:member_removed"),
            [
                {
                    "event": "pusher_internal:member_removed",
                    "channel": "presence-room",
                    "data": {"user_id": "ann"},
                }
            ],
        )
        self.assertEqual(
            self.successResultOf(self.server.hub.presenceUserIds(APP, "presence-room")), ["bob"]
        )

    def test_presenceBadChannelData(self) -> None:
        """channel_data must be JSON with a string or number user_id, and is signed as sent."""
        client = self.connect()
        for data in ("nope", "{}", '{"user_id":null}'):
            [reply] = self.subscribe(client, "presence-a", data)
            self.assertEqual(reply["event"], "pusher:subscription_error")
        [reply] = self.subscribe(client, "presence-a", None)
        self.assertEqual(reply["data"]["status"], 401)
        signed = presenceData(7)
        [reply] = self.subscribe(
            client,
            "presence-a",
            presenceData(8),
            auth=channelAuth(APP, client.socketId, "presence-a", signed),
        )
        self.assertEqual(reply["data"]["error"], "invalid signature")
        [reply] = self.subscribe(client, "presence-a", signed)
        self.assertEqual(reply["data"]["presence"]["ids"], ["7"])

    def test_maxSubscriptions(self) -> None:
        """Past the per-connection limit a subscription is refused with LimitReached."""
        self.make(maxSubscriptions=2)
        client = self.connect()
        self.subscribe(client, "a")
        self.subscribe(client, "b")
        [reply] = self.subscribe(client, "c")
        self.assertEqual(
            (reply["event"], reply["data"]["type"]), ("pusher:subscription_error", "LimitReached")
        )

    # client events

    def test_clientEvents(self) -> None:
        """
        Client events reach every other subscriber, not the sender; presence adds user_id;
        public and encrypted channels and unsubscribed sockets are refused with 4009.
        """
        a, b = self.connect(), self.connect()
        for c, user in ((a, "u-a"), (b, "u-b")):
            self.subscribe(c, "private-x")
            self.subscribe(c, "presence-x", presenceData(user))
            self.subscribe(c, "private-encrypted-x")
            self.subscribe(c, "public-x")
        a.read()
        b.read()
        self.assertEqual(a.send("client-hi", {"n": 1}, "private-x"), [])
        self.assertEqual(
            b.read(), [{"event": "client-hi", "channel": "private-x", "data": {"n": 1}}]
        )
        a.send("client-hi", {"n": 2}, "presence-x")
        self.assertEqual(
            b.read(),
            [{"event": "client-hi", "channel": "presence-x", "data": {"n": 2}, "user_id": "u-a"}],
        )
        for channel in ("private-encrypted-x", "public-x", "private-not-mine"):
            [reply] = a.send("client-hi", {}, channel)
            self.assertEqual(reply["data"]["code"], 4009, channel)
        self.assertEqual(b.read(), [])

    def test_clientEventRateLimit(self) -> None:
        """Over the per-connection rate client events get 4301 and are dropped; tokens refill."""
        self.make(clientEventsPerSecond=5)
        a, b = self.connect(), self.connect()
        self.subscribe(a, "private-x")
        self.subscribe(b, "private-x")
        replies = [a.send("client-n", {"i": i}, "private-x") for i in range(8)]
        self.assertEqual(replies[:5], [[]] * 5)
        for r in replies[5:]:
            self.assertEqual(r[0]["data"]["code"], 4301)
        self.assertEqual(len(b.read()), 5)
        self.clock.advance(1)
        self.assertEqual(a.send("client-n", {}, "private-x"), [])
        self.assertEqual(self.server.registry.rateLimited, 3)

    # sign-in

    def test_signin(self) -> None:
        """
        pusher:signin with a good signature answers signin_success; events to the user's
        channel reach all of its connections; terminate closes them with 4009.
        """
        userData = json.dumps({"id": "u1", "user_info": {"name": "Ann"}})
        a, b, other = self.connect(), self.connect(), self.connect()
        [bad] = a.send(
            "pusher:signin", {"auth": userAuth(OTHER, a.socketId, userData), "user_data": userData}
        )
        self.assertEqual(bad["data"]["code"], 4009)
        for c in (a, b):
            [ok] = c.send(
                "pusher:signin",
                {"auth": userAuth(APP, c.socketId, userData), "user_data": userData},
            )
            self.assertEqual(
                ok, {"event": "pusher:signin_success", "data": {"user_data": userData}}
            )
            # pusher-js then subscribes to its user channel
            [sub] = c.send("pusher:subscribe", {"channel": "#server-to-user-u1", "auth": ""})
            self.assertEqual(sub["event"], "pusher_internal:subscription_succeeded")
        [refused] = other.send("pusher:subscribe", {"channel": "#server-to-user-u1"})
        self.assertEqual(refused["event"], "pusher:subscription_error")
        self.publish("#server-to-user-u1", "note", "hello")
        for c in (a, b):
            self.assertEqual(
                c.read(), [{"event": "note", "channel": "#server-to-user-u1", "data": "hello"}]
            )
        self.assertEqual(other.read(), [])
        # presence without channel_data uses the signed-in user
        [joined] = self.subscribe(
            a, "presence-r", None, auth=channelAuth(APP, a.socketId, "presence-r")
        )
        self.assertEqual(joined["data"]["presence"]["hash"], {"u1": {"name": "Ann"}})
        self.successResultOf(self.server.hub.terminateUserConnections(APP, "u1"))
        self.assertEqual((a.closeCode, b.closeCode, other.closeCode), (4009, 4009, None))

    # cache channels, exclusion

    def test_cacheChannel(self) -> None:
        """A cache channel answers a miss when empty, else replays its last event on subscribe."""
        a = self.connect()
        self.assertEqual(
            self.subscribe(a, "cache-c")[1],
            {"event": "pusher:cache_miss", "channel": "cache-c", "data": {}},
        )
        self.publish("cache-c", "ev", "one")
        self.publish("cache-c", "ev", "two")
        b = self.connect()
        self.assertEqual(
            self.subscribe(b, "cache-c")[1], {"event": "ev", "channel": "cache-c", "data": "two"}
        )
        self.clock.advance(31 * 60)
        self.assertEqual(self.subscribe(self.connect(), "cache-c")[1]["event"], "pusher:cache_miss")

    def test_exceptSocketId(self) -> None:
        """A publish with a socket_id skips that connection only."""
        a, b = self.connect(), self.connect()
        self.subscribe(a, "news")
        self.subscribe(b, "news")
        self.publish("news", exceptSocketId=a.socketId)
        self.assertEqual((len(a.read()), len(b.read())), (0, 1))

    # bad input

    def test_badFrames(self) -> None:
        """Malformed frames get pusher:error 4002 and the connection keeps working."""
        client = self.connect()
        for raw in [
            b"nope",
            b"[]",
            b'{"event":1}',
            b'{"event":"pusher:subscribe","data":5}',
            b'{"event":"pusher:subscribe","data":{"channel":"bad name!"}}',
            b'{"event":"pusher:whatever"}',
            b'{"event":"client-x","data":{}}',
        ]:
            [reply] = client.sendRaw(raw)
            self.assertEqual(reply["data"]["code"], 4002, raw)
        [reply] = client.sendRaw(b'{"event":"pusher:ping"}', opcode=0x2)
        self.assertEqual(reply["data"]["code"], 4002)
        self.assertEqual(client.send("pusher:ping", {})[0]["event"], "pusher:pong")
        self.assertEqual(self.server.registry.protocolErrors, 8)

    def test_nestedFrames(self) -> None:
        """JSON nested deeper than 32 levels, 4,000 deep too, gets pusher:error 4002 naming the
        depth (never a RecursionError) and the connection keeps working."""
        client = self.connect()
        deep = b"[" * 40 + b"]" * 40
        for raw in [
            b"[" * 4000 + b"]" * 4000,
            b'{"event":"client-x","data":' + deep + b"}",
            b'{"event":"pusher:subscribe","data":"' + deep + b'"}',
        ]:
            [reply] = client.sendRaw(raw)
            self.assertEqual(reply["data"]["code"], 4002, raw)
            self.assertIn("nested deeper than 32 levels", reply["data"]["message"])
        self.assertEqual(client.send("pusher:ping", {})[0]["event"], "pusher:pong")

    def test_oversizedFrameCloses1009(self) -> None:
        """A frame over maxFrameBytes closes the connection with 1009."""
        self.make(maxFrameBytes=1000)
        client = self.connect()
        client.sendRaw(b'{"event":"pusher:ping","data":"' + b"x" * 2000 + b'"}')
        self.assertEqual(client.closeCode, 1009)

    # fan-out

    def test_slowConsumerClosed(self) -> None:
        """
        A connection whose transport stays full past maxOutboundBytes is closed with 4100 and
        counted; the other subscribers get every event.
        """
        self.make(maxOutboundBytes=2000)
        slow, fast = self.connect(), self.connect()
        self.subscribe(slow, "news")
        self.subscribe(fast, "news")
        slow.protocol.outbound.pauseProducing()  # what the transport does when it is full
        for _ in range(20):
            self.publish("news", "ev", "y" * 200)
        self.assertEqual(len(fast.events("ev")), 20)
        self.assertEqual(slow.closeCode, 4100)
        self.assertLess(len(slow.events("ev")), 20)
        self.assertEqual(slow.opcodes[slow.opcodes.index(0x8) :], [0x8])  # nothing after it
        self.assertEqual(self.server.registry.slowConsumerCloses, 1)

    def test_queuedFramesGoBeforeTheCloseFrame(self) -> None:
        """
        Frames queued for a connection when it closes (the client's close answered by
        Autobahn, or a close of ours) are written before the close frame, and nothing after.
        """
        a, b = self.connect(), self.connect()
        for x in (a, b):
            self.subscribe(x, "news")
        self.publish("news", "ev", "first")  # written at once: the registry was quiet
        self.successResultOf(self.server.hub.publish(APP, ["news"], "ev", "queued"))
        a.protocol.dataReceived(maskedFrame(b"\x03\xe8", 0x8))  # the client closes, 1000
        self.server.registry.closeChannel(APP.id, "news", 4009, "terminated")  # b, by us
        for client, code in ((a, 1000), (b, 4009)):
            self.assertEqual([e["data"] for e in client.events("ev")], ["first", "queued"])
            self.assertEqual(client.closeCode, code)
            self.assertEqual(client.opcodes[client.opcodes.index(0x8) :], [0x8])
        self.assertEqual(self.server.registry.slowConsumerCloses, 0)

    def test_failingSubscriberCounted(self) -> None:
        """A subscriber whose write raises is counted; the rest still get the event."""
        a, b, c = self.connect(), self.connect(), self.connect()
        for x in (a, b, c):
            self.subscribe(x, "news")

        def broken(data: bytes) -> None:
            raise RuntimeError("boom")

        b.protocol.outbound.write = broken
        self.publish("news")
        self.assertEqual((len(a.events("ev")), len(c.events("ev"))), (1, 1))
        self.assertEqual(self.server.registry.deliveryFailures, 1)
        self.assertEqual(self.server.registry.deliveries, 3)  # queued for three, one write failed

    def test_openConnectionKeepsNoPerConnectionExtras(self) -> None:
        """
        An open connection that has read a message keeps neither its own traffic counters nor
        the unmasker of that message (they are not read again), and still works.
        """
        a = self.connect()
        self.subscribe(a, "news")
        own = vars(a.protocol)
        self.assertNotIn("trafficStats", own)
        self.assertIsNone(a.protocol.current_frame_masker)
        self.assertEqual(a.send("pusher:ping", {}), [{"event": "pusher:pong", "data": {}}])
        self.publish("news")
        self.assertEqual(len(a.events("ev")), 1)

    def test_disconnectCleansUp(self) -> None:
        """A closed connection leaves every channel; the channel is no longer occupied."""
        a = self.connect()
        self.subscribe(a, "news")
        self.subscribe(a, "presence-p", presenceData("u"))
        info = self.successResultOf(self.server.hub.channelInfo(APP, "presence-p"))
        self.assertEqual((info.occupied, info.subscriptionCount, info.userCount), (True, 1, 1))
        occupied = self.successResultOf(self.server.hub.occupiedChannels(APP, None))
        self.assertEqual(set(occupied), {"news", "presence-p"})
        a.disconnect()
        info = self.successResultOf(self.server.hub.channelInfo(APP, "presence-p"))
        self.assertEqual((info.occupied, info.userCount), (False, 0))
        self.assertEqual(self.successResultOf(self.server.hub.occupiedChannels(APP, None)), {})
        self.assertEqual(self.server.registry.connectionCount, 0)

    def test_closeAll(self) -> None:
        """closeAll closes every connection with the code and fires once they are gone."""
        a, b = self.connect(), self.connect()
        d = self.server.registry.closeAll(4200, "bye")
        self.assertNoResult(d)
        self.assertEqual((a.closeCode, b.closeCode), (4200, 4200))
        a.disconnect()
        b.disconnect()
        self.successResultOf(d)

    def test_interfaces(self) -> None:
        """Hub provides IHub and LocalBroker IBroker; health says ok; metrics are numbers."""
        verifyObject(IHub, self.server.hub)
        verifyObject(IBroker, self.server.broker)
        self.assertEqual(self.server.hub.health(), {"broker": "ok"})
        for name, _help, kind, value in self.server.registry.metrics():
            self.assertTrue(name.startswith("pushsvc_"))
            self.assertIn(kind, ("gauge", "counter"))
            self.assertIsInstance(value, int)


# -- real loopback -----------------------------------------------------------------------------


class LoopbackTests(TestCase):
    timeout = 60
    settings: dict[str, dict[str, Any]] = {
        "test_slowConsumer": {"maxOutboundBytes": 32 * 1024},
    }

    def setUp(self) -> None:
        self.start(**self.settings.get(self._testMethodName, {}))

    def start(self, **settings: Any) -> None:
        self.server = Server(reactor, **settings)
        root = Resource()
        resource = makeAppResource(
            self.server.apps, self.server.hub, self.server.registry, reactor, self.server.settings
        )
        self.factory = resource._factory  # type: ignore[attr-defined]  # the factory behind the resource
        root.putChild(b"app", resource)
        self.port = listenLocal(Site(root))
        self.clients: list[WSClient] = []
        self.addCleanup(self.stop)

    @inlineCallbacks
    def stop(self) -> Any:
        for c in self.clients:
            if not c.closed.called:
                c.transport.abortConnection()  # type: ignore[union-attr]  # connected: transport is set
        for c in self.clients:
            yield c.closed
        yield self.factory.registry.whenIdle()
        yield self.port.stopListening()

    @inlineCallbacks
    def connect(self, path: str | None = None, keep: bool = True, established: bool = True) -> Any:
        portNumber = self.port.getHost().port  # type: ignore[attr-defined]  # a TCP port has a port
        client = yield connectClient(
            portNumber,
            path or PATH,
            keep,
            established=False,
            openHandshakeTimeout=0,
            closeHandshakeTimeout=0,
        )
        self.clients.append(client)
        if established:
            yield client.expect("pusher:connection_established")
        return client

    def subscribe(
        self, client: WSClient, channel: str, channelData: str | None = None, app: App = APP
    ) -> Deferred[Any]:
        return subscribeClient(app, client, channel, channelData)

    @inlineCallbacks
    def test_publicSubscribeAndPublish(self) -> Any:
        """A real client connects, subscribes and receives a hub.publish; socket_id excludes."""
        a = yield self.connect()
        b = yield self.connect()
        self.assertRegex(a.socketId, r"^\d+\.\d+$")
        yield self.subscribe(a, "news")
        yield self.subscribe(b, "news")
        yield self.server.hub.publish(APP, ["news"], "update", '{"n":1}')
        msg = yield a.expect("update", "news")
        self.assertEqual(msg["data"], '{"n":1}')
        yield b.expect("update", "news")
        yield self.server.hub.publish(APP, ["news"], "update", "2", a.socketId)
        msg = yield b.expect("update", "news")
        self.assertEqual(msg["data"], "2")
        yield a.roundTrip()
        self.assertEqual(len(a.matching("update")), 1)

    @inlineCallbacks
    def test_privateAndPresence(self) -> Any:
        """
        Private auth good and bad; presence member_added/removed once per user, never to the
        joining socket, removed only after the user's last connection left.
        """
        a = yield self.connect()
        a.sendJSON("pusher:subscribe", {"channel": "private-x", "auth": "nope:bad"})
        err = yield a.expect("pusher:subscription_error", "private-x")
        self.assertEqual(err["data"]["status"], 401)
        yield self.subscribe(a, "private-x")

        watcher = yield self.connect()
        yield self.subscribe(watcher, "presence-room", presenceData("w"))
        ann1 = yield self.connect()
        ann2 = yield self.connect()
        ok = yield self.subscribe(ann1, "presence-room", presenceData("ann", {"n": "Ann"}))
        self.assertEqual(ok["data"]["presence"]["count"], 2)
        added = yield watcher.expect("pusher_internal:member_added")
        self.assertEqual(added["data"], {"user_id": "ann", "user_info": {"n": "Ann"}})
        yield self.subscribe(ann2, "presence-room", presenceData("ann", {"n": "Ann"}))
        ann1.sendClose()
        yield ann1.closed
        yield ann2.roundTrip()
        yield watcher.roundTrip()
        self.assertEqual(len(watcher.matching("pusher_internal:member_added")), 1)
        self.assertEqual(watcher.matching("pusher_internal:member_removed"), [])
        self.assertEqual(ann2.matching("pusher_internal:member_added"), [])
        ann2.sendClose()
        removed = yield watcher.expect("pusher_internal:member_removed")
        self.assertEqual(removed["data"], {"user_id": "ann"})

    @inlineCallbacks
    def test_clientEventsAndRateLimit(self) -> Any:
        """Client events reach others with user_id on presence, not the sender; 4301 above rate."""
        a = yield self.connect()
        b = yield self.connect()
        for c, user in ((a, "ua"), (b, "ub")):
            yield self.subscribe(c, "presence-chat", presenceData(user))
        a.sendJSON("client-typing", {"on": True}, "presence-chat")
        msg = yield b.expect("client-typing", "presence-chat")
        self.assertEqual((msg["data"], msg["user_id"]), ('{"on":true}', "ua"))
        for i in range(15):
            a.sendJSON("client-n", {"i": i}, "presence-chat")
        err = yield a.expect("pusher:error")
        self.assertEqual(err["data"]["code"], 4301)
        yield a.roundTrip()
        self.assertEqual(a.matching("client-typing") + a.matching("client-n"), [])

    @inlineCallbacks
    def test_refusedConnections(self) -> Any:
        """Unknown key: pusher:error and close 4001; no protocol version: 4008."""
        for path, code in (("/app/unknown?protocol=7", 4001), (f"/app/{APP.key}", 4008)):
            c = yield self.connect(path, established=False)
            err = yield c.expect("pusher:error")
            self.assertEqual(err["data"]["code"], code)
            closed = yield c.closed
            self.assertEqual(closed, code)

    @inlineCallbacks
    def test_signinAndCache(self) -> Any:
        """Sign-in reaches #server-to-user-{id}; a cache channel replays its last event."""
        a = yield self.connect()
        userData = '{"id":"u1"}'
        a.sendJSON(
            "pusher:signin", {"auth": userAuth(APP, a.socketId, userData), "user_data": userData}
        )
        ok = yield a.expect("pusher:signin_success")
        self.assertEqual(ok["data"], {"user_data": userData})
        yield self.server.hub.publish(APP, ["#server-to-user-u1"], "note", "hi")
        note = yield a.expect("note")
        self.assertEqual(note["channel"], "#server-to-user-u1")

        yield self.server.hub.publish(APP, ["cache-prices"], "price", "42")
        yield self.subscribe(a, "cache-prices")
        replay = yield a.expect("price", "cache-prices")
        self.assertEqual(replay["data"], "42")

    @inlineCallbacks
    def test_slowConsumer(self) -> Any:
        """
        A client that stops reading is closed with 4100 once its unsent output passes the
        limit, and counted; another subscriber receives every single event.
        """
        slow = yield self.connect(keep=False)
        fast = yield self.connect(keep=False)
        yield self.subscribe(slow, "feed")
        yield self.subscribe(fast, "feed")
        serverSlow = self.server.registry.connection(slow.socketId)
        slow.transport.pauseProducing()  # stop reading: the server's buffers fill up
        payload = "z" * 4000
        sent = 0
        for _ in range(3000):  # at most ~100 MB; the kernel buffers take a few MB
            for _ in range(8):
                yield self.server.hub.publish(APP, ["feed"], "tick", payload)
                sent += 1
            yield fast.expectCount("tick", sent)
            if self.server.registry.slowConsumerCloses:
                break
        self.assertEqual(self.server.registry.slowConsumerCloses, 1)
        self.assertEqual(serverSlow.localCloseCode, 4100)  # type: ignore[union-attr]  # the protocol is connected
        for _ in range(8):
            yield self.server.hub.publish(APP, ["feed"], "tick", payload)
            sent += 1
        yield fast.expectCount("tick", sent)
        self.assertEqual(fast.counts["tick"], sent)
        slow.transport.resumeProducing()  # it reads the backlog, then the close frame
        code = yield slow.closed
        self.assertIn(code, (4100, 1006))  # 1006 if the server gave up waiting first

    @inlineCallbacks
    def test_hostileFrames(self) -> Any:
        """
        Malformed and hostile frames on a live connection each get pusher:error 4002 (binary,
        bad JSON, wrong types, unknown events, bad names) or a close (1007 not UTF-8, 1009 too
        big); another connection on the server keeps being served.
        """
        bystander = yield self.connect()
        yield self.subscribe(bystander, "news")
        victim = yield self.connect()
        rng = random.Random(1234)
        hostile: list[tuple[bytes, bool]] = [
            (b"not json", False),
            (b"[]", False),
            (b"null", False),
            (b'"s"', False),
            (b"{}", False),
            (b'{"event":null}', False),
            (b'{"event":["x"]}', False),
            (b'{"event":"pusher:subscribe"}', False),
            (b'{"event":"pusher:subscribe","data":"[1]"}', False),
            (b'{"event":"pusher:subscribe","data":{"channel":"' + b"a" * 300 + b'"}}', False),
            (b'{"event":"pusher:subscribe","data":{"channel":"a b"}}', False),
            (b'{"event":"pusher:subscribe","data":{"channel":"c","auth":5}}', False),
            (b'{"event":"pusher:signin","data":{"auth":"x"}}', False),
            (b'{"event":"pusher:nope"}', False),
            (b'{"event":"nope"}', False),
            (b'{"event":"client-x","channel":"bad/name"}', False),
            (b"[" * 5000, False),
            (b'{"event":"pusher:ping"}', True),
            (b"\x00\x01", True),
        ]
        for _ in range(100):
            junk = bytes(rng.randrange(32, 127) for _ in range(rng.randrange(0, 40)))
            if junk.startswith(b"{"):
                continue
            hostile.append((junk, rng.random() < 0.2))
        for payload, binary in hostile:
            victim.sendMessage(payload, isBinary=binary)
        yield victim.roundTrip()
        errors = victim.matching("pusher:error")
        self.assertEqual(len(errors), len(hostile))
        self.assertEqual({e["data"]["code"] for e in errors}, {4002})

        for payload, code in ((b'{"event":"\xff"}', 1007), (b"x" * 70000, 1009)):
            c = yield self.connect()
            c.sendMessage(payload)
            closed = yield c.closed
            self.assertEqual(closed, code)
        yield self.server.hub.publish(APP, ["news"], "still", "here")
        msg = yield bystander.expect("still", "news")
        self.assertEqual(msg["data"], "here")


class SocketIdTests(SynchronousTestCase):
    def setUp(self) -> None:
        harness = InMemoryTests()
        harness.setUp()
        self.server = harness.server
        self.connect = harness.connect

    def test_unpredictableAndUnique(self) -> None:
        """
        200 connections get 200 socket ids in Pusher's digits.digits form, and no part of one
        repeats in another (nor the node id): neither part is shared or counted.
        """
        clients = [self.connect() for _ in range(200)]
        ids = [c.socketId for c in clients]
        for socketId in ids:
            self.assertRegex(socketId, r"\A[1-9][0-9]{15}\.[1-9][0-9]{15}\Z")
        parts = [part for socketId in ids for part in socketId.split(".")]
        self.assertEqual(len(set(parts)), 400)
        self.assertNotIn(self.server.hub.nodeId, parts)
        self.assertEqual(self.server.registry.connectionCount, 200)

    def test_neverOneInUse(self) -> None:
        """An id that a connection of this process holds is never handed out again."""
        hub = self.server.hub
        taken = self.connect().socketId
        drawn = iter([taken, "1234567890123456.1234567890123456"])
        self.patch(hub_module, "randomSocketId", lambda: next(drawn))
        self.assertEqual(hub.newSocketId(), "1234567890123456.1234567890123456")

    def test_nodeIdPerHub(self) -> None:
        """Each hub (process) has its own random node id for the cluster state."""
        clock = Clock()
        hubs = [Hub(Registry(PushSettings(), clock), LocalBroker(), clock) for _ in range(3)]
        self.assertEqual(len({h.nodeId for h in hubs}), 3)


# -- property tests on a live connection ---------------------------------------------------------

# Frames a hostile or broken client might send: valid-looking events with wrong shapes, real
# protocol events with junk data, arbitrary JSON, arbitrary bytes, binary frames.
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=10,
)
_events = st.sampled_from(
    [
        "pusher:subscribe",
        "pusher:unsubscribe",
        "pusher:ping",
        "pusher:pong",
        "pusher:signin",
        "client-x",
        "pusher_internal:member_added",
        "nope",
    ]
) | st.text(max_size=30)
_channels = st.sampled_from(
    [
        "news",
        "private-x",
        "presence-x",
        "private-encrypted-x",
        "cache-x",
        "#server-to-user-1",
        "",
        "a b",
        "x" * 201,
    ]
) | st.text(max_size=30)
_frames = st.one_of(
    st.builds(
        lambda e, d, c: json.dumps({"event": e, "data": d, "channel": c}).encode(),
        _events,
        _json,
        _channels,
    ),
    st.builds(
        lambda e, d: json.dumps({"event": e, "data": d}).encode(),
        _events,
        st.dictionaries(
            st.sampled_from(["channel", "auth", "channel_data", "user_data"]), _json, max_size=4
        ),
    ),
    st.builds(lambda v: json.dumps(v).encode(), _json),
    st.binary(max_size=200),
)
# What the protocol module documents for bad input: an error frame with these codes, or a close.
ERROR_CODES = {4002, 4009, 4301}
CLOSE_CODES = {1007, 1009}


class LiveConnectionPropertyTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.tuples(_frames, st.booleans()), min_size=1, max_size=8))
    def test_hostileFramesAnswered(self, sent: list[tuple[bytes, bool]]) -> None:
        """
        Whatever a client sends, it gets only documented replies (an error with a documented
        code, a subscription answer, a pong) or a documented close code, and a bystander on the
        same server still receives the next publish.
        """
        clock = Clock()
        server = Server(clock)
        factory = makeAppFactory(server.apps, server.hub, server.registry, clock, server.settings)
        factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
        bystander = FakeClient(factory, PATH)
        bystander.send("pusher:subscribe", {"channel": "news"})
        victim = FakeClient(factory, PATH)
        for payload, binary in sent:
            if victim.closeCode is not None:
                break
            replies = victim.sendRaw(payload, opcode=0x2 if binary else 0x1)
            for reply in replies:
                event = reply["event"]
                if event == "pusher:error":
                    self.assertIn(reply["data"]["code"], ERROR_CODES, payload)
                else:
                    self.assertIn(
                        event,
                        {
                            "pusher:pong",
                            "pusher_internal:subscription_succeeded",
                            "pusher:subscription_error",
                            "pusher:signin_success",
                            "pusher:cache_miss",
                        },
                        payload,
                    )
        if victim.closeCode is not None:
            self.assertIn(victim.closeCode, CLOSE_CODES | ERROR_CODES)
        bystander.read()
        self.successResultOf(server.hub.publish(APP, ["news"], "after", "still here"))
        self.assertEqual(
            bystander.read(), [{"event": "after", "channel": "news", "data": "still here"}]
        )
