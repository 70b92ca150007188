"""
The Pusher HTTP API (/apps) and the /notify webhook: StubTreq over the resources, and the
official pusher SDK against a real loopback port.
"""

from __future__ import annotations

import io
import json
from typing import Any
from urllib.parse import unquote, urlencode

import pusher
import pusher.errors
import pusher.http
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.threads import deferToThread
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import pages
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from pushsvc.api import makeApiResource, makeUsersResource
from pushsvc.apiauth import apiSignature, bodyMd5, notifySignature
from pushsvc.apps import App, Apps
from pushsvc.interfaces import BrokerUnavailable, ChannelInfo, IHub
from pushsvc.testing import FakeHub, Published
from pushsvc.webhook import NotifyResource
from tests.helpers import asRequest, listenLocal, portOf, stubTreq

NOW = 1_700_000_000
BASE = "http://push.example"
APP = App("3", "the-key", "the-secret", maxDataBytes=1000)
OTHER = App("4", "other-key", "other-secret")
OFF = App("5", "off-key", "off-secret", enabled=False)


def signedURL(
    method: str,
    path: str,
    body: bytes = b"",
    query: dict[str, str] | None = None,
    app: App = APP,
    ts: int = NOW,
) -> str:
    """C{BASE + path} with the auth parameters, URL-escaped (the signature is over raw values)."""
    params = dict(query or {}, auth_key=app.key, auth_timestamp=str(ts), auth_version="1.0")
    if body:
        params["body_md5"] = bodyMd5(body)
    params["auth_signature"] = apiSignature(app.secret, method, path, params)
    return BASE + path + "?" + urlencode(params)


class Root(Resource):
    def getChild(self, path: bytes, request: Any) -> IResource:
        return pages.notFound()


def makeRoot(apps: Apps, hub: IHub, now: Any) -> Resource:
    root = Root()
    root.putChild(b"apps", makeApiResource(apps, hub, now))
    root.putChild(b"users", makeUsersResource(apps, hub, now))
    root.putChild(b"notify", NotifyResource(apps, hub, now))
    return root


class FakeHubTests(SynchronousTestCase):
    def test_interface(self) -> None:
        """FakeHub provides IHub."""
        self.assertTrue(verifyObject(IHub, FakeHub()))

    def test_failPublishes(self) -> None:
        """With failPublishes set, publish fails with BrokerUnavailable and records nothing."""
        hub = FakeHub()
        hub.failPublishes = True
        self.failureResultOf(hub.publish(APP, ["a"], "e", "{}"), BrokerUnavailable)
        self.assertEqual(hub.published, [])
        self.assertNotEqual(hub.health()["broker"], "ok")


class APITestsMixin:
    """Requests through StubTreq, with a FakeHub and a fixed clock."""

    def setUp(self) -> None:
        self.hub = FakeHub()
        self.now = float(NOW)
        self.apps = Apps([APP, OTHER, OFF])
        self.treq = stubTreq(makeRoot(self.apps, self.hub, lambda: self.now))

    @inlineCallbacks
    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, str] | None = None,
        app: App = APP,
        raw: bytes | None = None,
        url: str | None = None,
    ) -> Any:
        """Sign and send; fires with (status, decoded JSON reply)."""
        if raw is None:
            raw = b"" if body is None else json.dumps(body).encode()
        if url is None:
            url = signedURL(method, path, raw, query, app)
        response = yield self.treq.request(
            method, url, data=raw or None, headers={"Content-Type": ["application/json"]}
        )
        content = yield response.content()
        ctype = response.headers.getRawHeaders("content-type", [""])[0]
        self.assertIn("application/json", ctype)  # type: ignore[attr-defined]  # a mixin: the TestCase has it
        reply = json.loads(content)
        if response.code >= 400:
            self.assertIsInstance(reply.get("error"), str)  # type: ignore[attr-defined]  # a mixin: the TestCase has it
        return response.code, reply


class EventsTests(APITestsMixin, TestCase):
    @inlineCallbacks
    def test_oneChannel(self) -> Any:
        """POST /events with channel publishes once and answers {}."""
        code, reply = yield self.call(
            "POST", "/apps/3/events", {"name": "ev", "data": '{"a":1}', "channel": "ch"}
        )
        self.assertEqual((code, reply), (200, {}))
        self.assertEqual(self.hub.published, [Published(APP, ["ch"], "ev", '{"a":1}', None)])

    @inlineCallbacks
    def test_channelsAndSocketId(self) -> Any:
        """channels (duplicates dropped) and socket_id reach hub.publish; odd names are fine."""
        names = ["a", "private-b", "presence-c", "#server-to-user-42", "x-_=@,.;", "a"]
        code, reply = yield self.call(
            "POST",
            "/apps/3/events",
            {"name": "ev", "data": "d", "channels": names, "socket_id": "123.456"},
        )
        self.assertEqual((code, reply), (200, {}))
        self.assertEqual(self.hub.published, [Published(APP, names[:-1], "ev", "d", "123.456")])

    @inlineCallbacks
    def test_info(self) -> Any:
        """info answers the asked counts per channel; user_count for presence channels only."""
        self.hub.channels["presence-p"] = ChannelInfo(True, 3, 2)
        self.hub.channels["c"] = ChannelInfo(True, 5)
        code, reply = yield self.call(
            "POST",
            "/apps/3/events",
            {
                "name": "ev",
                "data": "d",
                "channels": ["presence-p", "c", "empty"],
                "info": "user_count,subscription_count",
            },
        )
        self.assertEqual(code, 200)
        self.assertEqual(
            reply,
            {
                "channels": {
                    "presence-p": {"user_count": 2, "subscription_count": 3},
                    "c": {"subscription_count": 5},
                    "empty": {"subscription_count": 0},
                }
            },
        )

    @inlineCallbacks
    def test_badBodies(self) -> Any:
        """Malformed JSON, wrong types and bad names are 400, and nothing is published."""
        good = {"name": "ev", "data": "d", "channel": "ch"}
        bad: list[Any] = [
            {k: v for k, v in good.items() if k != "name"},
            dict(good, name=""),
            dict(good, name="n" * 201),
            dict(good, name="pusher:subscribe"),
            dict(good, name="pusher_internal:member_added"),
            dict(good, name=5),
            dict(good, data={"a": 1}),
            {k: v for k, v in good.items() if k != "data"},
            {k: v for k, v in good.items() if k != "channel"},
            dict(good, channel="has space"),
            dict(good, channel="é"),
            dict(good, channel="c" * 201),
            dict(good, channel=""),
            dict(good, channel=["a"]),
            dict(good, channel="#server-to-user-"),
            dict(good, channels=["a"]),
            dict({k: v for k, v in good.items() if k != "channel"}, channels=[]),
            dict({k: v for k, v in good.items() if k != "channel"}, channels="a"),
            dict({k: v for k, v in good.items() if k != "channel"}, channels=["a", 1]),
            dict({k: v for k, v in good.items() if k != "channel"}, channels=["a", "b c"]),
            dict(
                {k: v for k, v in good.items() if k != "channel"},
                channels=[f"c{i}" for i in range(101)],
            ),
            dict(
                {k: v for k, v in good.items() if k != "channel"},
                channels=["private-encrypted-a", "b"],
            ),
            dict(good, socket_id="abc"),
            dict(good, socket_id="1.2.3"),
            dict(good, socket_id=12),
            dict(good, info="everything"),
            [good],
        ]
        for body in bad:
            code, reply = yield self.call("POST", "/apps/3/events", body)
            self.assertEqual(code, 400, body)
        for raw in (b"{", b"\xff\xfe", b"null", b""):
            code, _ = yield self.call("POST", "/apps/3/events", raw=raw)
            self.assertEqual(code, 400, raw)
        self.assertEqual(self.hub.published, [])

    @inlineCallbacks
    def test_hundredChannels(self) -> Any:
        """100 channels is the most one event may go to."""
        channels = [f"c{i}" for i in range(100)]
        code, _ = yield self.call(
            "POST", "/apps/3/events", {"name": "e", "data": "d", "channels": channels}
        )
        self.assertEqual(code, 200)
        self.assertEqual(self.hub.published[0].channels, channels)

    @inlineCallbacks
    def test_tooLarge(self) -> Any:
        """data over app.maxDataBytes (counted in UTF-8 bytes) is 413; a body over 64 KiB too."""
        code, _ = yield self.call(
            "POST", "/apps/3/events", {"name": "e", "data": "x" * 1000, "channel": "c"}
        )
        self.assertEqual(code, 200)
        code, _ = yield self.call(
            "POST", "/apps/3/events", {"name": "e", "data": "é" * 501, "channel": "c"}
        )
        self.assertEqual(code, 413)
        code, _ = yield self.call(
            "POST", "/apps/4/events", {"name": "e", "data": "x" * 70_000, "channel": "c"}, app=OTHER
        )
        self.assertEqual(code, 413)
        self.assertEqual(len(self.hub.published), 1)

    @inlineCallbacks
    def test_brokerDown(self) -> Any:
        """When the broker refuses the publish the answer is 503, never 2xx."""
        self.hub.failPublishes = True
        code, reply = yield self.call(
            "POST", "/apps/3/events", {"name": "e", "data": "d", "channel": "c"}
        )
        self.assertEqual(code, 503)
        code, reply = yield self.call(
            "POST", "/apps/3/batch_events", {"batch": [{"name": "e", "data": "d", "channel": "c"}]}
        )
        self.assertEqual(code, 503)


class BatchTests(APITestsMixin, TestCase):
    @inlineCallbacks
    def test_batch(self) -> Any:
        """Each event of a batch is published in order; the answer is {}."""
        batch = [
            {"channel": "a", "name": "e1", "data": "1"},
            {"channel": "b", "name": "e2", "data": "2", "socket_id": "1.2"},
        ]
        code, reply = yield self.call("POST", "/apps/3/batch_events", {"batch": batch})
        self.assertEqual((code, reply), (200, {}))
        self.assertEqual(
            self.hub.published,
            [Published(APP, ["a"], "e1", "1", None), Published(APP, ["b"], "e2", "2", "1.2")],
        )

    @inlineCallbacks
    def test_batchInfo(self) -> Any:
        """With info on some events the answer has one attributes object per event."""
        self.hub.channels["presence-a"] = ChannelInfo(True, 4, 3)
        batch = [
            {"channel": "presence-a", "name": "e", "data": "1", "info": "user_count"},
            {"channel": "b", "name": "e", "data": "2"},
        ]
        code, reply = yield self.call("POST", "/apps/3/batch_events", {"batch": batch})
        self.assertEqual((code, reply), (200, {"batch": [{"user_count": 3}, {}]}))

    @inlineCallbacks
    def test_badBatch(self) -> Any:
        """A batch that is not a list of 1..10 valid events is 400 and publishes nothing."""
        good = {"channel": "a", "name": "e", "data": "d"}
        body: object
        for body in (
            {},
            {"batch": good},
            {"batch": []},
            {"batch": [good] * 11},
            {"batch": [good, "x"]},
            {"batch": [good, dict(good, channel="b c")]},
            {"batch": [good, {"channels": ["a"], "name": "e", "data": "d"}]},
        ):
            code, reply = yield self.call("POST", "/apps/3/batch_events", body)
            self.assertEqual(code, 400, body)
        code, reply = yield self.call(
            "POST", "/apps/3/batch_events", {"batch": [good, dict(good, data=7)]}
        )
        self.assertIn("batch[1]", reply["error"])
        self.assertEqual(self.hub.published, [])

    @inlineCallbacks
    def test_batchSizes(self) -> Any:
        """A batch body may be larger than 64 KiB (10 events near the data limit); data is not."""
        big = App("6", "big-key", "big-secret", maxDataBytes=9000)
        self.treq = stubTreq(makeRoot(Apps([big]), self.hub, lambda: self.now))
        batch = [{"channel": f"c{i}", "name": "e", "data": "x" * 9000} for i in range(10)]
        code, _ = yield self.call("POST", "/apps/6/batch_events", {"batch": batch}, app=big)
        self.assertEqual(code, 200)
        self.assertEqual(len(self.hub.published), 10)
        batch[3]["data"] += "x"
        code, _ = yield self.call("POST", "/apps/6/batch_events", {"batch": batch}, app=big)
        self.assertEqual(code, 413)
        code, _ = yield self.call(
            "POST", "/apps/6/batch_events", raw=b" " * (640 * 1024 + 1), app=big
        )
        self.assertEqual(code, 413)


class QueryTests(APITestsMixin, TestCase):
    def setUp(self) -> None:
        super().setUp()
        self.hub.channels.update(
            {
                "presence-a": ChannelInfo(True, 3, 2),
                "presence-b": ChannelInfo(True, 1, 1),
                "private-c": ChannelInfo(True, 7),
                "gone": ChannelInfo(False, 0),
            }
        )
        self.hub.presence["presence-a"] = ["u1", "u2"]

    @inlineCallbacks
    def test_channels(self) -> Any:
        """GET /channels lists occupied channels, filtered by prefix, user_count on request."""
        code, reply = yield self.call("GET", "/apps/3/channels")
        self.assertEqual(
            (code, reply),
            (200, {"channels": {"presence-a": {}, "presence-b": {}, "private-c": {}}}),
        )
        code, reply = yield self.call(
            "GET", "/apps/3/channels", query={"filter_by_prefix": "presence-", "info": "user_count"}
        )
        self.assertEqual(
            (code, reply),
            (200, {"channels": {"presence-a": {"user_count": 2}, "presence-b": {"user_count": 1}}}),
        )

    @inlineCallbacks
    def test_channelsUserCountNeedsPresence(self) -> Any:
        """info=user_count without a presence- prefix filter is 400; unknown info is 400."""
        for query in (
            {"info": "user_count"},
            {"info": "user_count", "filter_by_prefix": "private-"},
            {"info": "colour"},
        ):
            code, _ = yield self.call("GET", "/apps/3/channels", query=query)
            self.assertEqual(code, 400, query)

    @inlineCallbacks
    def test_channel(self) -> Any:
        """GET /channels/{name} tells occupied and the asked counts."""
        code, reply = yield self.call(
            "GET",
            "/apps/3/channels/presence-a",
            query={"info": "user_count,subscription_count"},
        )
        self.assertEqual(
            (code, reply), (200, {"occupied": True, "user_count": 2, "subscription_count": 3})
        )
        code, reply = yield self.call("GET", "/apps/3/channels/nobody-here")
        self.assertEqual((code, reply), (200, {"occupied": False}))
        code, reply = yield self.call(
            "GET", "/apps/3/channels/private-c", query={"info": "subscription_count"}
        )
        self.assertEqual((code, reply), (200, {"occupied": True, "subscription_count": 7}))

    @inlineCallbacks
    def test_channelErrors(self) -> Any:
        """user_count on a non-presence channel and bad channel names are 400."""
        code, _ = yield self.call("GET", "/apps/3/channels/private-c", query={"info": "user_count"})
        self.assertEqual(code, 400)
        code, _ = yield self.call("GET", "/apps/3/channels/a%20b")
        self.assertEqual(code, 400)
        code, _ = yield self.call("GET", "/apps/3/channels/" + "c" * 201)
        self.assertEqual(code, 400)

    @inlineCallbacks
    def test_users(self) -> Any:
        """GET /channels/{presence}/users lists user ids; other channels are 400."""
        code, reply = yield self.call("GET", "/apps/3/channels/presence-a/users")
        self.assertEqual((code, reply), (200, {"users": [{"id": "u1"}, {"id": "u2"}]}))
        code, reply = yield self.call("GET", "/apps/3/channels/presence-zz/users")
        self.assertEqual((code, reply), (200, {"users": []}))
        code, _ = yield self.call("GET", "/apps/3/channels/private-c/users")
        self.assertEqual(code, 400)

    @inlineCallbacks
    def test_terminate(self) -> Any:
        """POST /users/{id}/terminate_connections asks the hub and answers {}."""
        code, reply = yield self.call("POST", "/apps/3/users/u-1/terminate_connections", {})
        self.assertEqual((code, reply), (200, {}))
        code, reply = yield self.call("POST", "/apps/3/users/u-2/terminate_connections")
        self.assertEqual((code, reply), (200, {}))
        self.assertEqual(self.hub.terminated, [(APP, "u-1"), (APP, "u-2")])
        code, _ = yield self.call("POST", "/apps/3/users/a%20b/terminate_connections", {})
        self.assertEqual(code, 400)
        code, _ = yield self.call("POST", "/apps/3/users/u/terminate_connections", [])
        self.assertEqual(code, 400)


class CommonErrorTests(APITestsMixin, TestCase):
    @inlineCallbacks
    def test_notFound(self) -> Any:
        """An unknown app id, a missing one or an unknown endpoint is a JSON 404."""
        for path in ("/apps/99/events", "/apps/", "/apps/3/nothing", "/apps/3/channels/a/b/c"):
            code, _ = yield self.call("POST", path, {})
            self.assertEqual(code, 404, path)

    @inlineCallbacks
    def test_wrongMethod(self) -> Any:
        """A known endpoint with the wrong method is 405 with an Allow header."""
        code, _ = yield self.call("GET", "/apps/3/events")
        self.assertEqual(code, 405)
        response = yield self.treq.delete(signedURL("DELETE", "/apps/3/channels"))
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders("allow"), ["GET"])

    @inlineCallbacks
    def test_disabled(self) -> Any:
        """A disabled app's correctly signed requests are 403."""
        code, _ = yield self.call(
            "POST", "/apps/5/events", {"name": "e", "data": "d", "channel": "c"}, app=OFF
        )
        self.assertEqual(code, 403)
        code, _ = yield self.call("GET", "/apps/5/channels", app=OFF)
        self.assertEqual(code, 403)
        self.assertEqual(self.hub.published, [])

    @inlineCallbacks
    def test_signatures(self) -> Any:
        """No auth, another app's credentials, an old timestamp or a changed body are 401."""
        body = json.dumps({"name": "e", "data": "d", "channel": "c"}).encode()
        url = signedURL("POST", "/apps/3/events", body)
        urls = [
            BASE + "/apps/3/events",
            signedURL("POST", "/apps/3/events", body, app=OTHER).replace("/apps/4", "/apps/3"),
            signedURL("POST", "/apps/3/events", body, ts=NOW - 601),
        ]
        for bad in urls:
            code, reply = yield self.call("POST", "/apps/3/events", raw=body, url=bad)
            self.assertEqual(code, 401, bad)
        code, _ = yield self.call("POST", "/apps/3/events", raw=body + b" ", url=url)
        self.assertEqual(code, 401)
        code, reply = yield self.call("POST", "/apps/3/events", raw=body, url=url)
        self.assertEqual(code, 200)
        self.assertEqual(len(self.hub.published), 1)

    @inlineCallbacks
    def test_escapedPath(self) -> Any:
        """A percent-escaped path verifies whether the decoded or the escaped form was signed."""
        self.hub.channels["a@b"] = ChannelInfo(True, 2)
        for signedPath in ("/apps/3/channels/a@b", "/apps/3/channels/a%40b"):
            url = signedURL("GET", signedPath).replace(signedPath, "/apps/3/channels/a%40b")
            code, reply = yield self.call("GET", "", url=url)
            self.assertEqual((code, reply), (200, {"occupied": True}), signedPath)

    @inlineCallbacks
    def test_repeatedParameter(self) -> Any:
        """A query parameter given twice is 400 (which one was signed?)."""
        url = signedURL("GET", "/apps/3/channels") + "&info=user_count&info=user_count"
        code, _ = yield self.call("GET", "/apps/3/channels", url=url)
        self.assertEqual(code, 400)

    @inlineCallbacks
    def test_tamperedParameter(self) -> Any:
        """A documented parameter changed after signing is 401."""
        url = signedURL("GET", "/apps/3/channels", query={"info": "subscription_count"})
        code, _ = yield self.call("GET", "", url=url.replace("subscription_count", "user_count"))
        self.assertEqual(code, 401)

    @inlineCallbacks
    def test_caseVariantAndUnknownParameters(self) -> Any:
        """
        A second parameter whose name differs only in case (auth_signature and Auth_Signature),
        a repeated one, or one the endpoint does not document is 400 with a JSON error, on
        every endpoint, before the signature is looked at; nothing is published.
        """
        body = json.dumps({"name": "e", "data": "d", "channel": "c"}).encode()
        events = signedURL("POST", "/apps/3/events", body)
        channels = signedURL("GET", "/apps/3/channels", query={"info": "subscription_count"})
        for method, url, raw in (
            ("POST", events + "&Auth_Signature=zzz", body),
            ("POST", events + "&AUTH_KEY=" + APP.key, body),
            ("POST", events + "&auth_timestamp=" + str(NOW), body),
            ("POST", events + "&extra=1", body),
            ("POST", events + "&info=user_count", body),
            ("GET", channels + "&Info=user_count", b""),
            ("GET", channels + "&info=user_count", b""),
            ("GET", signedURL("GET", "/apps/3/channels", query={"extra": "1"}), b""),
            ("GET", signedURL("GET", "/apps/3/channels/c", query={"filter_by_prefix": "c"}), b""),
            (
                "GET",
                signedURL("GET", "/apps/3/channels/presence-c/users", query={"info": "user_count"}),
                b"",
            ),
        ):
            code, reply = yield self.call(method, "", raw=raw, url=url)
            self.assertEqual(code, 400, url)
            self.assertIn("parameter", reply["error"])
        self.assertEqual(self.hub.published, [])
        code, _ = yield self.call("GET", "", url=channels)
        self.assertEqual(code, 200)

    @inlineCallbacks
    def test_nestedJSON(self) -> Any:
        """A body nested 4,000 deep, or 33 deep, is 400 with a JSON error, never a 500; 32 deep
        is not refused for its depth."""
        for raw in (
            b"[" * 4000 + b"]" * 4000,
            b'{"name":"e","x":' + b"[" * 4000 + b"]" * 4000 + b"}",
            b'{"name":"e","x":' + b"[" * 32 + b"]" * 32 + b"}",
        ):
            for path in ("/apps/3/events", "/apps/3/batch_events"):
                code, reply = yield self.call("POST", path, raw=raw)
                self.assertEqual(code, 400, (path, raw[:20]))
                self.assertIn("nested deeper than 32 levels", reply["error"])
        ok = {"name": "e", "data": "d", "channel": "c", "x": json.loads("[" * 31 + "]" * 31)}
        code, _ = yield self.call("POST", "/apps/3/events", ok)
        self.assertEqual(code, 200)

    @inlineCallbacks
    def test_namesWithControlCharacters(self) -> Any:
        """Channels, event names and socket ids with a trailing newline are 400."""
        for body in (
            {"name": "e", "data": "d", "channel": "c\n"},
            {"name": "e\n", "data": "d", "channel": "c"},
            {"name": "e\u202e", "data": "d", "channel": "c"},
            {"name": "e", "data": "d", "channel": "c", "socket_id": "1.2\n"},
            {"name": "e", "data": "d", "channel": "c", "socket_id": "\u0661.2"},
        ):
            code, _ = yield self.call("POST", "/apps/3/events", body)
            self.assertEqual(code, 400, body)
        code, _ = yield self.call(
            "POST",
            "/apps/3/users/u%0A/terminate_connections",
            {},
            url=signedURL("POST", "/apps/3/users/u\n/terminate_connections", b"{}").replace(
                "u\n", "u%0A"
            ),
        )
        self.assertEqual(code, 400)
        self.assertEqual(self.hub.published, [])

    @inlineCallbacks
    def test_formBodyIsNotAParameter(self) -> Any:
        """A form-encoded body does not join the signed parameters (twisted's request.args)."""
        raw = b"a=1"
        response = yield self.treq.post(
            signedURL("POST", "/apps/3/users/u/terminate_connections", raw),
            data=raw,
            headers={"Content-Type": ["application/x-www-form-urlencoded"]},
        )
        self.assertEqual(response.code, 400)  # signature fine; body not JSON


class HangUpTests(SynchronousTestCase):
    def test_clientGoneBeforeTheBrokerAnswers(self) -> None:
        """A client that hangs up while the publish is pending breaks nothing."""
        pending: Deferred[None] = Deferred()
        hub = FakeHub()
        hub.publish = lambda *a: pending  # type: ignore[method-assign]  # replaced for this test
        resource = makeApiResource(Apps([APP]), hub, lambda: float(NOW))
        body = json.dumps({"name": "e", "data": "d", "channel": "c"}).encode()
        url = signedURL("POST", "/apps/3/events", body)
        request = DummyRequest([b"3", b"events"])
        request.method = b"POST"
        request.uri = url[len(BASE) :].encode()
        asRequest(request).path = b"/apps/3/events"
        asRequest(request).content = io.BytesIO(body)
        self.assertEqual(resource.render(asRequest(request)), NOT_DONE_YET)
        request.processingFailed(Failure(ConnectionDone()))
        pending.callback(None)
        # Nothing is written to the closed request, and nothing is logged as an error.
        self.assertEqual((request.finished, request.written), (0, []))


class NotifyTests(APITestsMixin, TestCase):
    @inlineCallbacks
    def notify(self, channel: str, raw: bytes, ts: int = NOW, signature: str | None = None) -> Any:
        """What curl would send, signed for the decoded C{channel}; fires with (status, reply)."""
        if signature is None:
            signature = "sha256=" + notifySignature(APP.secret, str(ts), unquote(channel), raw)
        response = yield self.treq.post(
            BASE + "/notify/" + channel,
            data=raw,
            headers={
                "Content-Type": ["application/json"],
                "X-Pushsvc-Timestamp": [str(ts)],
                "X-Pushsvc-Signature": [signature],
            },
        )
        reply = json.loads((yield response.content()))
        return response.code, reply

    @inlineCallbacks
    def test_defaults(self) -> Any:
        """An empty signed body publishes 'updated' with data '{}' on the default app."""
        code, reply = yield self.notify("orders", b"")
        self.assertEqual((code, reply), (202, {"ok": True}))
        self.assertEqual(self.hub.published, [Published(APP, ["orders"], "updated", "{}", None)])

    @inlineCallbacks
    def test_eventAndData(self) -> Any:
        """event and data are taken from the body; data that is not a string is JSON-encoded."""
        yield self.notify("c", b'{"event": "changed", "data": {"id": 7}}')
        yield self.notify("c", b'{"data": "plain"}')
        self.assertEqual(
            [(p.event, p.data) for p in self.hub.published],
            [("changed", '{"id":7}'), ("updated", "plain")],
        )

    @inlineCallbacks
    def test_refused(self) -> Any:
        """Replays, future timestamps and wrong signatures are 401; nothing is published."""
        for kw in (
            {"ts": NOW - 301},
            {"ts": NOW + 301},
            {"signature": "sha256=" + "0" * 64},
            {"signature": "sha256=" + notifySignature("wrong", str(NOW), "c", b"{}")},
            {"signature": "sha256=" + notifySignature(APP.secret, str(NOW), "d", b"{}")},
        ):
            code, _ = yield self.notify("c", b"{}", **kw)
            self.assertEqual(code, 401, kw)
        response = yield self.treq.post(BASE + "/notify/c", data=b"{}")
        self.assertEqual(response.code, 401)
        self.assertEqual(self.hub.published, [])

    @inlineCallbacks
    def test_badRequests(self) -> Any:
        """Bad channel names, bad bodies and unknown fields are 400; too much data 413."""
        for channel, raw, status in (
            ("a%20b", b"", 400),
            ("c", b"[1]", 400),
            ("c", b"{", 400),
            ("c", b'{"evnt": "x"}', 400),
            ("c", b'{"event": ""}', 400),
            ("c", b'{"event": 3}', 400),
            ("c", b'{"event": "pusher_internal:subscription_succeeded"}', 400),
            ("c", b'{"event": "pusher:error"}', 400),
            ("c", json.dumps({"data": "x" * 1001}).encode(), 413),
            ("", b"", 404),
            ("a/b", b"", 404),
        ):
            code, _ = yield self.notify(channel, raw)
            self.assertEqual(code, status, (channel, raw))
        self.assertEqual(self.hub.published, [])

    @inlineCallbacks
    def test_replayToAnotherChannel(self) -> Any:
        """A call signed for public-orders, replayed to /notify/private-admin or to
        /notify/%23server-to-user-u1, is 401; the signed one goes through (202) to its own
        channel, and a user channel can be notified when signed for it (decoded)."""
        body = b'{"event":"paid","data":{"id":1}}'
        signature = "sha256=" + notifySignature(APP.secret, str(NOW), "public-orders", body)
        for other in ("private-admin", "%23server-to-user-u1", "public-orders2"):
            code, reply = yield self.notify(other, body, signature=signature)
            self.assertEqual(code, 401, other)
            self.assertIn("error", reply)
        self.assertEqual(self.hub.published, [])
        code, _ = yield self.notify("public-orders", body, signature=signature)
        self.assertEqual(code, 202)
        code, _ = yield self.notify("%23server-to-user-u1", body)
        self.assertEqual(code, 202)
        self.assertEqual(
            [p.channels for p in self.hub.published], [["public-orders"], ["#server-to-user-u1"]]
        )

    @inlineCallbacks
    def test_replayToTheSameChannel(self) -> Any:
        """The same signed call sent again within the window is 409 with a JSON error and
        publishes nothing more; a new timestamp (a new signature) goes through."""
        body = b'{"event":"paid"}'
        code, _ = yield self.notify("public-orders", body)
        self.assertEqual(code, 202)
        for _ in range(3):
            code, reply = yield self.notify("public-orders", body)
            self.assertEqual(code, 409)
            self.assertIn("already accepted", reply["error"])
        self.assertEqual(len(self.hub.published), 1)
        code, _ = yield self.notify("public-orders", body, ts=NOW + 1)
        self.assertEqual(code, 202)
        self.assertEqual(len(self.hub.published), 2)

    @inlineCallbacks
    def test_badCallsClaimNothing(self) -> Any:
        """A refused call (bad body, disabled app) does not use up its signature."""
        code, _ = yield self.notify("c", b'{"evnt":"x"}')
        self.assertEqual(code, 400)
        self.assertEqual(self.hub.claimed, set())

    @inlineCallbacks
    def test_nestedJSON(self) -> Any:
        """A body nested 4,000 deep is 400 with a JSON error, never a 500."""
        for raw in (
            b"[" * 4000 + b"]" * 4000,
            b'{"data":' + b"[" * 4000 + b"]" * 4000 + b"}",
            b'{"data":' + b"[" * 32 + b"]" * 32 + b"}",
        ):
            code, reply = yield self.notify("c", raw)
            self.assertEqual(code, 400)
            self.assertIn("nested deeper than 32 levels", reply["error"])
        self.assertEqual(self.hub.published, [])

    @inlineCallbacks
    def test_controlCharacters(self) -> Any:
        """A channel or event name with a trailing newline is 400."""
        for channel, raw in (
            ("c%0A", b""),
            ("c", b'{"event":"e\\n"}'),
            ("%23server-to-user-u%0A", b""),
        ):
            code, _ = yield self.notify(channel, raw)
            self.assertEqual(code, 400, (channel, raw))
        self.assertEqual(self.hub.published, [])

    @inlineCallbacks
    def test_brokerDownAndMethod(self) -> Any:
        """A broker failure is 503; GET is 405."""
        self.hub.failPublishes = True
        code, _ = yield self.notify("c", b"")
        self.assertEqual(code, 503)
        response = yield self.treq.get(BASE + "/notify/c")
        self.assertEqual(response.code, 405)


class DrainingFactory(WrappingFactory):
    """Closes every connection it accepted and fires when they are all gone."""

    def __init__(self, wrapped: Site) -> None:
        super().__init__(wrapped)
        self.waiting: list[Deferred[None]] = []

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiting, self.waiting = self.waiting, []
            for d in waiting:
                d.callback(None)

    def drain(self) -> Deferred[None]:
        if not self.protocols:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self.waiting.append(d)
        for p in list(self.protocols):
            p.transport.loseConnection()
        return d


class OfficialSDKTests(TestCase):
    """The official pusher SDK (requests-based, run in a thread) against a real loopback port."""

    def setUp(self) -> None:
        self.hub = FakeHub()
        self.hub.channels.update(
            {"presence-room": ChannelInfo(True, 3, 2), "private-x": ChannelInfo(True, 1)}
        )
        self.hub.presence["presence-room"] = ["ann", "bob"]
        root: IResource = makeRoot(Apps([APP]), self.hub, reactor.seconds)
        self.factory = DrainingFactory(Site(root))
        self.port = listenLocal(self.factory)
        self.addCleanup(self.port.stopListening)
        self.addCleanup(self.factory.drain)

    def client(self, secret: str = APP.secret) -> pusher.Pusher:
        client = pusher.Pusher(
            app_id=APP.id,
            key=APP.key,
            secret=secret,
            host="127.0.0.1",
            port=portOf(self.port),
            ssl=False,
        )
        self.addCleanup(client._pusher_client.http.session.close)
        return client

    @inlineCallbacks
    def test_sdk(self) -> Any:
        """
        trigger, trigger_batch, channels_info, channel_info and users_info of the official SDK
        work unchanged, and the hub sees exactly the events triggered.
        """
        sdk = self.client()
        reply = yield deferToThread(sdk.trigger, ["private-x", "presence-room"], "ev", {"a": 1})
        self.assertEqual(reply, {})
        reply = yield deferToThread(sdk.trigger, "private-x", "ev2", "text", "1.2")
        self.assertEqual(reply, {})
        reply = yield deferToThread(
            sdk.trigger_batch,
            [
                {"channel": "a", "name": "b1", "data": {"n": 1}},
                {"channel": "#server-to-user-ann", "name": "b2", "data": "x"},
            ],
        )
        self.assertEqual(reply, {})
        self.assertEqual(
            self.hub.published,
            [
                Published(APP, ["private-x", "presence-room"], "ev", '{"a": 1}', None),
                Published(APP, ["private-x"], "ev2", "text", "1.2"),
                Published(APP, ["a"], "b1", '{"n": 1}', None),
                Published(APP, ["#server-to-user-ann"], "b2", "x", None),
            ],
        )
        reply = yield deferToThread(sdk.channels_info, "presence-", ["user_count"])
        self.assertEqual(reply, {"channels": {"presence-room": {"user_count": 2}}})
        reply = yield deferToThread(sdk.channels_info)
        self.assertEqual(reply, {"channels": {"presence-room": {}, "private-x": {}}})
        reply = yield deferToThread(
            sdk.channel_info, "presence-room", ["user_count", "subscription_count"]
        )
        self.assertEqual(reply, {"occupied": True, "user_count": 2, "subscription_count": 3})
        reply = yield deferToThread(sdk.users_info, "presence-room")
        self.assertEqual(reply, {"users": [{"id": "ann"}, {"id": "bob"}]})

    @inlineCallbacks
    def test_sdkTerminate(self) -> Any:
        """
        pusher 3.3.4's terminate_user_connections posts to /users/{id}/... without the
        /apps/{app_id} prefix the HTTP API reference gives: that path reaches the default app,
        signed as sent; the documented path works too.
        """
        sdk = self.client()
        reply = yield deferToThread(sdk.terminate_user_connections, "bob")
        self.assertEqual(reply, {})
        inner = sdk._pusher_client
        request = pusher.http.Request(
            inner, pusher.http.POST, f"/apps/{APP.id}/users/ann/terminate_connections", {}
        )
        reply = yield deferToThread(inner.http.send_request, request)
        self.assertEqual(reply, {})
        self.assertEqual(self.hub.terminated, [(APP, "bob"), (APP, "ann")])

    @inlineCallbacks
    def test_sdkWrongSecret(self) -> Any:
        """With the wrong secret the SDK gets 401, raised as PusherBadAuth; nothing published."""
        sdk = self.client(secret="not-the-secret")
        for call in (
            lambda: sdk.trigger("c", "e", "d"),
            lambda: sdk.trigger_batch([{"channel": "c", "name": "e", "data": "d"}]),
            lambda: sdk.channels_info(),
        ):
            yield self.assertFailure(deferToThread(call), pusher.errors.PusherBadAuth)
        self.assertEqual(self.hub.published, [])

    @inlineCallbacks
    def test_sdkBrokerDown(self) -> Any:
        """With the broker down the SDK's trigger fails (503), it is never told it worked."""
        self.hub.failPublishes = True
        sdk = self.client()
        failure = yield self.assertFailure(
            deferToThread(sdk.trigger, "c", "e", "d"), pusher.errors.PusherBadStatus
        )
        self.assertIn("503", str(failure))
