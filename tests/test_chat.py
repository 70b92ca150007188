"""The chat REST API, driven through StubTreq with the memory store and a fake hub."""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from pushsvc.apps import App, Apps
from pushsvc.chat import ChatAPI, makeChatResource
from pushsvc.session import SessionSigner
from pushsvc.signing import channelSignature
from pushsvc.store.memory import MemoryStore
from pushsvc.testing import FakeHub

BASE = "http://chat.example:8080"
JSON = {"Content-Type": ["application/json"]}


class ChatAPITests(TestCase):
    def setUp(self) -> None:
        self.app = App("1", "the-key", "the-secret")
        self.store = MemoryStore()
        self.hub = FakeHub()
        self.ready = True
        self.clock = Clock()
        self.clock.advance(1234.5)
        self.chat, self.treq = self.makeChat()
        self.cookies: dict[str, str] = {}

    def makeChat(self, messagesPerMinute: int = 60) -> tuple[ChatAPI, StubTreq]:
        """A chat API (as one process would have) on the shared store, clock and session key."""
        chat = ChatAPI(
            Apps([self.app]),
            self.store,
            self.hub,
            SessionSigner(b"k" * 32, lambda: 1000.0),
            self.clock.seconds,
            lambda: self.ready,
            messagesPerMinute=messagesPerMinute,
        )
        root = Resource()
        root.putChild(b"api", makeChatResource(chat))
        return chat, StubTreq(root)

    @inlineCallbacks
    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, list[str]] | None = None,
        raw: bytes | None = None,
    ) -> Any:
        if raw is None and body is not None:
            raw = json.dumps(body).encode()
        allHeaders = dict(JSON if body is not None else {})
        allHeaders["Host"] = ["chat.example:8080"]
        allHeaders.update(headers or {})
        response = yield self.treq.request(
            method, BASE + path, data=raw, headers=allHeaders, cookies=self.cookies
        )
        for cookie in response.cookies():
            self.cookies[cookie.name] = cookie.value
        content = yield response.content()
        self.assertIn(b"application/json", response.headers.getRawHeaders(b"content-type")[0])
        return response.code, json.loads(content)

    def newBrowser(self, cookies: dict[str, str] | None = None) -> None:
        """Another browser (StubTreq keeps a cookie jar): no cookies, or C{cookies}."""
        _, self.treq = self.makeChat()
        self.cookies = dict(cookies or {})

    def signIn(self, name: str = "Ann") -> Deferred[Any]:
        return self.call("POST", "/api/session", {"name": name})

    @inlineCallbacks
    def test_sessionCookie(self) -> Any:
        """POST /api/session sets an HttpOnly, SameSite=Lax cookie that GET /api/session reads."""
        code, body = yield self.call("GET", "/api/session")
        self.assertEqual((code, body), (200, {"signed_in": False}))
        response = yield self.treq.post(
            BASE + "/api/session", data=b'{"name": "  Ann  "}', headers=JSON
        )
        setCookie = response.headers.getRawHeaders("set-cookie")[0]
        self.assertIn("HttpOnly", setCookie)
        self.assertIn("SameSite=Lax", setCookie)
        self.assertEqual(response.code, 200)
        code, body = yield self.signIn("  Ann  ")
        self.assertEqual((code, body["name"]), (200, "Ann"))
        code, me = yield self.call("GET", "/api/session")
        self.assertEqual((code, me), (200, body))

    @inlineCallbacks
    def test_badNames(self) -> Any:
        """
        Names are strings of 1-40 visible characters after trimming, with no control, format,
        bidi or zero-width characters, nor a leading combining mark; each refusal is a 400 with
        a sentence, and the bidi and zero-width ones name the character.
        """
        bidi = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
        zeroWidth = "\u200b\u200c\u200d\u2060\ufeff"
        refused: list[Any] = [
            "",
            "   ",
            "x" * 41,
            42,
            None,
            "a\x00b",
            "a\nb",
            "a\tb",
            "\ud800",
            "\u00ad",
            "a\u2028b",
            "\U000e0041",
            "\ue000",
            "\u0378",
            "\u0301abc",
            "\u0301",
            "e" + "\u0323" * 200,
            "x" * 1000,
        ]
        refused += [f"ann{c}lee" for c in bidi + zeroWidth]
        for name in refused:
            code, body = yield self.signIn(name)
            self.assertEqual(code, 400, repr(name))
            self.assertIsInstance(body["error"], str)
        code, body = yield self.signIn("evil\u202egnp.exe")
        self.assertIn("U+202E", body["error"])
        code, body = yield self.signIn("a\u200bb")
        self.assertIn("U+200B", body["error"])
        code, _ = yield self.signIn("x" * 40)
        self.assertEqual(code, 200)

    @inlineCallbacks
    def test_namesNormalised(self) -> Any:
        """Names are NFC, trimmed, inner white space runs made one space; combining marks do
        not count towards the 40 characters."""
        for given, stored in [
            ("  Ann \u3000  Lee  ", "Ann Lee"),
            ("Zoe\u0308", "Zo\u00eb"),
            ("\u1100\u1161", "\uac00"),
            ("e\u0301" * 40, "\u00e9" * 40),
            ("\u0928\u092e\u0938\u094d\u0924\u0947", "\u0928\u092e\u0938\u094d\u0924\u0947"),
            ("\U0001f600 ok", "\U0001f600 ok"),
        ]:
            code, body = yield self.signIn(given)
            self.assertEqual((code, body["name"]), (200, stored), repr(given))
            _, me = yield self.call("GET", "/api/session")
            self.assertEqual(me["name"], stored)

    @inlineCallbacks
    def test_postAndRead(self) -> Any:
        """A posted message is stored, answered 201 with the stored message, published once."""
        yield self.signIn("Ann")
        code, message = yield self.call("POST", "/api/rooms/general/messages", {"text": "hi <b>"})
        self.assertEqual(code, 201)
        self.assertEqual(
            (message["id"], message["room"], message["author"], message["text"]),
            (1, "general", "Ann", "hi <b>"),
        )
        self.assertEqual(message["created_at"], "1970-01-01T00:20:34.500Z")
        self.assertEqual(len(self.hub.published), 2)
        published, lobby = self.hub.published
        self.assertEqual(published.channels, ["presence-room-general"])
        self.assertEqual(published.event, "message")
        self.assertEqual(json.loads(published.data), message)
        self.assertEqual(
            (lobby.channels, lobby.event, json.loads(lobby.data)),
            (["private-chat-lobby"], "room-activity", {"name": "general", "last_id": 1}),
        )
        code, body = yield self.call("GET", "/api/rooms/general/messages")
        self.assertEqual((code, body["messages"]), (200, [message]))

    @inlineCallbacks
    def test_afterAndLimit(self) -> Any:
        """?after=ID: only newer messages, oldest first; limit bounds it; no after: newest."""
        yield self.signIn()
        for i in range(5):
            yield self.call("POST", "/api/rooms/r1/messages", {"text": f"m{i}"})
        _, body = yield self.call("GET", "/api/rooms/r1/messages?after=2&limit=2")
        self.assertEqual([m["id"] for m in body["messages"]], [3, 4])
        _, body = yield self.call("GET", "/api/rooms/r1/messages?limit=2")
        self.assertEqual([m["id"] for m in body["messages"]], [4, 5])
        _, body = yield self.call("GET", "/api/rooms/r1/messages?after=5")
        self.assertEqual(body["messages"], [])
        for query in ["limit=0", "limit=201", "limit=x", "after=-1", "after=abc"]:
            code, _ = yield self.call("GET", "/api/rooms/r1/messages?" + query)
            self.assertEqual(code, 400, query)
        _, rooms = yield self.call("GET", "/api/rooms")
        self.assertEqual(rooms["rooms"], [{"name": "r1", "last_id": 5}])

    @inlineCallbacks
    def test_badPosts(self) -> Any:
        """Bad input gets a 4xx JSON error and nothing is stored."""
        code, _ = yield self.call("POST", "/api/rooms/general/messages", {"text": "x"})
        self.assertEqual(code, 401)
        yield self.signIn()
        cases: list[tuple[int, str, Any, bytes | None, dict[str, list[str]] | None]] = [
            (400, "/api/rooms/general/messages", {"text": ""}, None, None),
            (400, "/api/rooms/general/messages", {"text": "   "}, None, None),
            (400, "/api/rooms/general/messages", {"text": "x" * 2001}, None, None),
            (400, "/api/rooms/general/messages", {"text": 5}, None, None),
            (400, "/api/rooms/general/messages", {}, b'{"text": "\\ud800"}', None),
            (400, "/api/rooms/general/messages", {"text": "a\x07"}, None, None),
            (400, "/api/rooms/general/messages", {}, None, None),
            (400, "/api/rooms/general/messages", [], None, None),
            (400, "/api/rooms/general/messages", {}, b"{not json", None),
            (400, "/api/rooms/general/messages", {}, b"\xff\xfe", None),
            (413, "/api/rooms/general/messages", {}, b'{"text": "' + b"a" * 70000 + b'"}', None),
            (400, "/api/rooms/Bad_Room/messages", {"text": "x"}, None, None),
            (400, "/api/rooms/-x/messages", {"text": "x"}, None, None),
            (
                415,
                "/api/rooms/general/messages",
                {"text": "x"},
                None,
                {"Content-Type": ["text/plain"]},
            ),
            (
                403,
                "/api/rooms/general/messages",
                {"text": "x"},
                None,
                {"Origin": ["http://evil.example"]},
            ),
            (404, "/api/rooms/general/nothing", {"text": "x"}, None, None),
            (404, "/api/nothing", {"text": "x"}, None, None),
        ]
        for status, path, body, raw, headers in cases:
            code, reply = yield self.call("POST", path, body, headers=headers, raw=raw)
            self.assertEqual(code, status, (path, body, raw and raw[:20], headers))
            self.assertIsInstance(reply["error"], str)
        code, _ = yield self.call(
            "POST", "/api/rooms/general/messages", {"text": "ok"}, headers={"Origin": [BASE]}
        )
        self.assertEqual(code, 201)
        _, listing = yield self.call("GET", "/api/rooms/general/messages")
        self.assertEqual([m["text"] for m in listing["messages"]], ["ok"])

    @inlineCallbacks
    def test_storeNotReady(self) -> Any:
        """Until the store is open, reads and posts answer 503 with a sentence."""
        yield self.signIn()
        self.ready = False
        code, body = yield self.call("POST", "/api/rooms/general/messages", {"text": "x"})
        self.assertEqual(code, 503)
        code, body = yield self.call("GET", "/api/rooms/general/messages")
        self.assertEqual(code, 503)

    @inlineCallbacks
    def test_storedEvenIfNotAnnounced(self) -> Any:
        """A message is durable before it is announced: a broker failure does not lose it."""
        yield self.signIn()
        self.hub.failPublishes = True
        code, message = yield self.call("POST", "/api/rooms/general/messages", {"text": "x"})
        self.assertEqual(code, 201)
        _, listing = yield self.call("GET", "/api/rooms/general/messages")
        self.assertEqual(listing["messages"], [message])

    @inlineCallbacks
    def test_pusherAuth(self) -> Any:
        """
        The page's room subscriptions (presence-room-NAME) are signed for the session's user;
        nothing is signed without a session, and no other channel of the app is signed at all.
        """
        form = {"Content-Type": ["application/x-www-form-urlencoded"]}
        room = b"socket_id=1.2&channel_name=presence-room-general"
        code, _ = yield self.call("POST", "/api/pusher/auth", headers=form, raw=room)
        self.assertEqual(code, 403)
        _, me = yield self.signIn("Ann")
        code, body = yield self.call("POST", "/api/pusher/auth", headers=form, raw=room)
        self.assertEqual(code, 200)
        data = json.loads(body["channel_data"])
        self.assertEqual(data, {"user_id": me["user_id"], "user_info": {"name": "Ann"}})
        self.assertEqual(
            body["auth"],
            "the-key:"
            + channelSignature("the-secret", "1.2", "presence-room-general", body["channel_data"]),
        )
        for channel in [
            b"private-x",
            b"private-billing-admin",
            b"presence-anything-else",
            b"presence-room-Bad_Room",
            b"presence-room-",
            b"private-encrypted-room-general",
        ]:
            code, _ = yield self.call(
                "POST",
                "/api/pusher/auth",
                headers=form,
                raw=b"socket_id=1.2&channel_name=" + channel,
            )
            self.assertEqual(code, 403, channel)
        for raw in [
            b"socket_id=x&channel_name=presence-room-general",
            b"socket_id=1.2&channel_name=a b",
        ]:
            code, _ = yield self.call("POST", "/api/pusher/auth", headers=form, raw=raw)
            self.assertEqual(code, 400, raw)

    @inlineCallbacks
    def test_trailingNewlines(self) -> Any:
        """POST /api/rooms/general%0A/messages is 400 and creates no room; the auth endpoint
        refuses socket_id=1.2%0A and a channel_name with a newline (400), signing nothing."""
        yield self.signIn()
        for room in ("general%0A", "general%0D%0A", "general%00", "%0Ageneral"):
            code, reply = yield self.call("POST", f"/api/rooms/{room}/messages", {"text": "x"})
            self.assertEqual(code, 400, room)
            self.assertIn("Room names", reply["error"])
        _, rooms = yield self.call("GET", "/api/rooms")
        self.assertEqual(rooms["rooms"], [])
        form = {"Content-Type": ["application/x-www-form-urlencoded"]}
        for raw in (
            b"socket_id=1.2%0A&channel_name=presence-room-general",
            b"socket_id=%D9%A1.2&channel_name=presence-room-general",
            b"socket_id=1.2&channel_name=presence-room-general%0A",
        ):
            code, reply = yield self.call("POST", "/api/pusher/auth", headers=form, raw=raw)
            self.assertEqual(code, 400, raw)
            self.assertNotIn("auth", reply)

    @inlineCallbacks
    def test_nestedJSON(self) -> Any:
        """JSON nested 4,000 deep (unclosed, within the 4 KiB /api/session reads) or 2,000 deep
        to /api/session, or 4,000 deep to a room, is 400 with a JSON error."""
        raw = b'{"name":' + b"[" * 4000 + b"]" * 4000 + b"}"
        code, reply = yield self.call("POST", "/api/session", {}, raw=raw)
        self.assertEqual(code, 413)  # over the 4 KiB /api/session reads, still a JSON error
        for raw in (b"[" * 2000 + b"]" * 2000, b"[" * 4000, b'{"name":' + b"[" * 4000):
            code, reply = yield self.call("POST", "/api/session", {}, raw=raw[:4096])
            self.assertEqual(code, 400, raw[:10])
            self.assertIn("nested deeper than 32 levels", reply["error"])
        yield self.signIn()
        raw = b'{"text":' + b"[" * 4000 + b"]" * 4000 + b"}"
        code, reply = yield self.call("POST", "/api/rooms/general/messages", {}, raw=raw)
        self.assertEqual(code, 400)
        self.assertIn("nested deeper than 32 levels", reply["error"])

    @inlineCallbacks
    def test_config(self) -> Any:
        code, body = yield self.call("GET", "/api/config")
        self.assertEqual(body["app_key"], "the-key")
        self.assertEqual(body["ws_path"], "/app/the-key")

    @inlineCallbacks
    def test_messageRateLimit(self) -> Any:
        """
        A session posts 20 messages at once, then one a second: the next is a 429 with
        Retry-After and a JSON sentence, and is not stored. Another session has its own bucket.
        """
        yield self.signIn("Ann")
        for i in range(20):
            code, _ = yield self.call("POST", "/api/rooms/general/messages", {"text": f"m{i}"})
            self.assertEqual(code, 201, i)
        response = yield self.treq.request(
            "POST",
            BASE + "/api/rooms/general/messages",
            data=b'{"text": "too many"}',
            headers={**JSON, "Host": ["chat.example:8080"]},
            cookies=self.cookies,
        )
        self.assertEqual(response.code, 429)
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"1"])
        body = json.loads((yield response.content()))
        self.assertIn("60 a minute", body["error"])
        _, listing = yield self.call("GET", "/api/rooms/general/messages?limit=200")
        self.assertEqual(len(listing["messages"]), 20)
        self.assertEqual(sum(p.event == "message" for p in self.hub.published), 20)

        self.clock.advance(1)
        code, _ = yield self.call("POST", "/api/rooms/general/messages", {"text": "later"})
        self.assertEqual(code, 201)
        code, _ = yield self.call("POST", "/api/rooms/general/messages", {"text": "again"})
        self.assertEqual(code, 429)

        ann = dict(self.cookies)
        yield self.signIn("Bo")
        code, _ = yield self.call("POST", "/api/rooms/general/messages", {"text": "bo here"})
        self.assertEqual(code, 201)
        self.cookies = ann
        self.clock.advance(20)
        for i in range(20):
            code, _ = yield self.call("POST", "/api/rooms/general/messages", {"text": f"n{i}"})
            self.assertEqual(code, 201, i)

    @inlineCallbacks
    def test_messageRateOption(self) -> Any:
        """--chat-messages-per-minute 6: bursts of 6, then Retry-After 10 s."""
        self.chat, self.treq = self.makeChat(messagesPerMinute=6)
        yield self.signIn()
        codes = []
        for _ in range(7):
            codes.append((yield self.call("POST", "/api/rooms/r/messages", {"text": "x"}))[0])
        self.assertEqual(codes, [201] * 6 + [429])
        self.clock.advance(9)
        code, body = yield self.call("POST", "/api/rooms/r/messages", {"text": "x"})
        self.assertEqual(code, 429)
        self.assertIn("1 s", body["error"])
        self.clock.advance(1)
        code, _ = yield self.call("POST", "/api/rooms/r/messages", {"text": "x"})
        self.assertEqual(code, 201)

    @inlineCallbacks
    def test_invalidPostsCostNothing(self) -> Any:
        """Refused posts (bad text, bad room) do not spend the session's message allowance."""
        yield self.signIn()
        for _ in range(30):
            code, _ = yield self.call("POST", "/api/rooms/general/messages", {"text": ""})
            self.assertEqual(code, 400)
        for i in range(20):
            code, _ = yield self.call("POST", "/api/rooms/general/messages", {"text": "ok"})
            self.assertEqual(code, 201, i)

    @inlineCallbacks
    def test_signOut(self) -> Any:
        """
        DELETE /api/session revokes the session and clears the cookie: the old cookie then gets
        401 from GET /api/session, posting and channel auth, here and on another process
        sharing the store; a new sign-in works; another session is untouched.
        """
        yield self.signIn("Bo")
        bo = dict(self.cookies)
        yield self.signIn("Ann")
        ann = dict(self.cookies)
        response = yield self.treq.delete(
            BASE + "/api/session", headers={"Host": ["chat.example:8080"]}, cookies=ann
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads((yield response.content())), {"signed_out": True})
        (cleared,) = response.headers.getRawHeaders("set-cookie")
        self.assertIn("pushsvc_session=;", cleared)
        self.assertIn("Max-Age=0", cleared)

        _, otherProcess = self.makeChat()
        form = {"Content-Type": ["application/x-www-form-urlencoded"]}
        auth = b"socket_id=1.2&channel_name=presence-room-general"
        for treq in (self.treq, otherProcess):
            self.treq = treq
            self.cookies = dict(ann)
            code, reply = yield self.call("GET", "/api/session")
            self.assertEqual((code, reply), (200, {"signed_in": False}))
            for method, path, body, headers, raw in [
                ("POST", "/api/rooms/general/messages", {"text": "x"}, None, None),
                ("POST", "/api/pusher/auth", None, form, auth),
                ("DELETE", "/api/session", None, None, None),
            ]:
                code, reply = yield self.call(method, path, body, headers=headers, raw=raw)
                self.assertEqual(code, 401, (method, path))
                self.assertIn("signed out", reply["error"])
            self.cookies = dict(bo)
            code, me = yield self.call("GET", "/api/session")
            self.assertEqual((code, me["name"]), (200, "Bo"))
        self.cookies = {}
        code, _ = yield self.signIn("Ann")
        self.assertEqual(code, 200)
        code, _ = yield self.call("POST", "/api/rooms/general/messages", {"text": "back"})
        self.assertEqual(code, 201)

    @inlineCallbacks
    def test_signOutNeedsSession(self) -> Any:
        """Signing out without a session is a 401; from another site a 403; with the store
        unavailable a 503, and the session stays valid."""
        code, _ = yield self.call("DELETE", "/api/session")
        self.assertEqual(code, 401)
        yield self.signIn()
        code, _ = yield self.call(
            "DELETE", "/api/session", headers={"Origin": ["http://evil.example"]}
        )
        self.assertEqual(code, 403)
        self.ready = False
        code, _ = yield self.call("DELETE", "/api/session")
        self.assertEqual(code, 503)
        self.ready = True
        code, _ = yield self.call("GET", "/api/session")
        self.assertEqual(code, 200)

    @inlineCallbacks
    def test_floodCostsNoStoreQueries(self) -> Any:
        """Posts over the rate are refused before the store is asked anything."""
        yield self.signIn()
        asked = []
        original = self.store.sessionRevoked

        def counting(sessionId: str) -> Deferred[bool]:
            asked.append(sessionId)
            return original(sessionId)

        self.patch(self.store, "sessionRevoked", counting)
        for _ in range(50):
            yield self.call("POST", "/api/rooms/general/messages", {"text": "x"})
        self.assertEqual(len(asked), 20)

    @inlineCallbacks
    def test_beforePages(self) -> Any:
        """?before=ID pages back, oldest first in each page, down to message 1 with no gap or
        repeat; before and after together, or a bad before, are 400."""
        yield self.signIn()
        for i in range(1, 8):
            self.clock.advance(1)
            yield self.call("POST", "/api/rooms/r1/messages", {"text": f"m{i}"})
        _, body = yield self.call("GET", "/api/rooms/r1/messages?limit=3")
        seen = [m["id"] for m in body["messages"]]
        self.assertEqual(seen, [5, 6, 7])
        while True:
            _, body = yield self.call("GET", f"/api/rooms/r1/messages?before={seen[0]}&limit=3")
            if not body["messages"]:
                break
            seen = [m["id"] for m in body["messages"]] + seen
        self.assertEqual(seen, list(range(1, 8)))
        for query in ["before=0", "before=x", "before=3&after=1"]:
            code, reply = yield self.call("GET", "/api/rooms/r1/messages?" + query)
            self.assertEqual(code, 400, query)
            self.assertIsInstance(reply["error"], str)

    @inlineCallbacks
    def test_clientIdOnce(self) -> Any:
        """
        The same client_id POSTed twice, and three times at once, is stored once: the retries
        are answered 200 with the first message and announced nothing; a bad client_id is 400.
        """
        yield self.signIn("Ann")
        code, first = yield self.call(
            "POST", "/api/rooms/r/messages", {"text": "hello", "client_id": "c-1"}
        )
        self.assertEqual(code, 201)
        code, again = yield self.call(
            "POST", "/api/rooms/r/messages", {"text": "hello", "client_id": "c-1"}
        )
        self.assertEqual((code, again), (200, first))
        together = yield gatherResults(
            [
                self.call("POST", "/api/rooms/r/messages", {"text": "x", "client_id": "c-2"})
                for _ in range(3)
            ]
        )
        self.assertEqual(sorted(code for code, _ in together), [200, 200, 201])
        self.assertEqual({m["id"] for _, m in together}, {2})
        _, listing = yield self.call("GET", "/api/rooms/r/messages")
        self.assertEqual([m["text"] for m in listing["messages"]], ["hello", "x"])
        self.assertEqual(sum(p.event == "message" for p in self.hub.published), 2)
        for bad in ["", "x" * 65, "a b", 5, "é"]:
            code, reply = yield self.call(
                "POST", "/api/rooms/r/messages", {"text": "y", "client_id": bad}
            )
            self.assertEqual(code, 400, bad)
            self.assertIn("client_id", reply["error"])

    @inlineCallbacks
    def test_identity(self) -> Any:
        """
        Messages carry their author's user id; two people both named Ann have different ids;
        a signed-in user who changes name keeps hers.
        """
        _, ann1 = yield self.signIn("Ann")
        _, m1 = yield self.call("POST", "/api/rooms/r/messages", {"text": "one"})
        self.newBrowser()
        _, ann2 = yield self.signIn("Ann")
        _, m2 = yield self.call("POST", "/api/rooms/r/messages", {"text": "two"})
        self.assertNotEqual(ann1["user_id"], ann2["user_id"])
        self.assertEqual((m1["user_id"], m2["user_id"]), (ann1["user_id"], ann2["user_id"]))
        _, renamed = yield self.signIn("Annie")
        self.assertEqual((renamed["user_id"], renamed["name"]), (ann2["user_id"], "Annie"))
        _, me = yield self.call("GET", "/api/session")
        self.assertEqual(me, {"signed_in": True, "user_id": ann2["user_id"], "name": "Annie"})

    @inlineCallbacks
    def test_editAndDelete(self) -> Any:
        """
        The author edits, then deletes, her message; each change is stored and announced as
        message-updated; someone else gets 403, a missing or deleted message 404.
        """
        yield self.signIn("Ann")
        ann = dict(self.cookies)
        _, message = yield self.call("POST", "/api/rooms/r/messages", {"text": "typo"})
        path = f"/api/rooms/r/messages/{message['id']}"
        self.clock.advance(5)
        code, edited = yield self.call("PATCH", path, {"text": "fixed"})
        self.assertEqual((code, edited["text"], edited["deleted"]), (200, "fixed", False))
        self.assertEqual(edited["edited_at"], "1970-01-01T00:20:39.500Z")
        update = self.hub.published[-1]
        self.assertEqual(
            (update.channels, update.event, json.loads(update.data)),
            (["presence-room-r"], "message-updated", edited),
        )
        self.newBrowser()
        yield self.signIn("Bob")
        code, reply = yield self.call("PATCH", path, {"text": "mine now"})
        self.assertEqual(code, 403)
        code, _ = yield self.call("DELETE", path)
        self.assertEqual(code, 403)
        self.newBrowser(ann)
        code, deleted = yield self.call("DELETE", path)
        self.assertEqual((code, deleted["text"], deleted["deleted"]), (200, "", True))
        self.assertEqual(json.loads(self.hub.published[-1].data), deleted)
        code, _ = yield self.call("PATCH", path, {"text": "undo"})
        self.assertEqual(code, 404)
        for missing in ["/api/rooms/r/messages/9", "/api/rooms/r/messages/x"]:
            code, reply = yield self.call("PATCH", missing, {"text": "y"})
            self.assertEqual(code, 404, missing)
        code, _ = yield self.call("PATCH", path, {"text": ""})
        self.assertEqual(code, 400)
        _, listing = yield self.call("GET", "/api/rooms/r/messages")
        self.assertEqual(listing["messages"], [deleted])
        self.newBrowser()
        code, _ = yield self.call("DELETE", path)
        self.assertEqual(code, 401)

    @inlineCallbacks
    def test_createRoomAndLobby(self) -> Any:
        """
        POST /api/rooms creates an empty room (201, then 200), lists it and announces it on
        the lobby channel, which the chat's auth endpoint signs for a signed-in page.
        """
        code, _ = yield self.call("POST", "/api/rooms", {"name": "new-room"})
        self.assertEqual(code, 401)
        yield self.signIn()
        code, reply = yield self.call("POST", "/api/rooms", {"name": "new-room"})
        self.assertEqual((code, reply), (201, {"name": "new-room", "created": True}))
        (created,) = self.hub.published
        self.assertEqual(
            (created.channels, created.event, json.loads(created.data)),
            (["private-chat-lobby"], "room-created", {"name": "new-room"}),
        )
        code, reply = yield self.call("POST", "/api/rooms", {"name": "new-room"})
        self.assertEqual((code, reply["created"]), (200, False))
        self.assertEqual(len(self.hub.published), 1)
        for bad in ["Bad Name", "", 7]:
            code, reply = yield self.call("POST", "/api/rooms", {"name": bad})
            self.assertEqual(code, 400, bad)
        _, rooms = yield self.call("GET", "/api/rooms")
        self.assertEqual(rooms["rooms"], [{"name": "new-room", "last_id": 0}])

        form = {"Content-Type": ["application/x-www-form-urlencoded"]}
        code, reply = yield self.call(
            "POST",
            "/api/pusher/auth",
            headers=form,
            raw=b"socket_id=1.2&channel_name=private-chat-lobby",
        )
        self.assertEqual(code, 200)
        signature = channelSignature("the-secret", "1.2", "private-chat-lobby", None)
        self.assertEqual(reply, {"auth": f"the-key:{signature}"})
        code, _ = yield self.call(
            "POST",
            "/api/pusher/auth",
            headers=form,
            raw=b"socket_id=1.2&channel_name=private-chat-lobbyx",
        )
        self.assertEqual(code, 403)
