"""Pure parsing, validation and encoding of Pusher frames: unit and property tests."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pushsvc import frames
from pushsvc.frames import ClientFrame, ProtocolError, parseClientFrame

MAX = 64 * 1024
channelNames = st.text(
    alphabet="-abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_=@,.;",
    min_size=1,
    max_size=200,
)
jsonValues = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def parse(obj: Any) -> ClientFrame:
    return parseClientFrame(json.dumps(obj).encode(), False, MAX)


class ParseTests(SynchronousTestCase):
    def assertCode(
        self, payload: bytes, code: int = frames.ERR_MALFORMED, binary: bool = False
    ) -> None:
        with self.assertRaises(ProtocolError) as cm:
            parseClientFrame(payload, binary, MAX)
        self.assertEqual(cm.exception.code, code)

    def test_malformed(self) -> None:
        """Binary, non-UTF-8, non-JSON, non-object, event-less and oversized frames are 4002."""
        self.assertCode(b'{"event":"pusher:ping"}', binary=True)
        self.assertCode(b"\xff\xfe")
        self.assertCode(b"{nope")
        self.assertCode(b"[1,2]")
        self.assertCode(b'"text"')
        self.assertCode(b"{}")
        self.assertCode(b'{"event": 5}')
        self.assertCode(b'{"event": ""}')
        self.assertCode(b'{"event": "x", "channel": 7}')
        self.assertCode(b'{"event": "x", "channel": "bad name"}')
        self.assertCode(b'{"event": "x", "channel": "' + b"a" * 201 + b'"}')
        self.assertCode(b'{"event": "pusher:subscribe", "data": "{not json"}')
        self.assertCode(b" " * (MAX + 1))
        self.assertCode(b"[" * 100000)

    def test_nestedTooDeep(self) -> None:
        """JSON nested deeper than 32 levels is 4002 naming the depth, in the frame or in the
        JSON strings inside it (pusher:* data, channel_data, user_data); 32 levels pass."""

        def nested(depth: int) -> Any:
            value: Any = 1
            for _ in range(depth):
                value = [value]
            return value

        for payload in (
            b"[" * 4000 + b"]" * 4000,
            b'{"event":"x","data":' + b"[" * 4000 + b"}",
            json.dumps({"event": "client-x", "data": nested(32)}).encode(),
        ):
            with self.assertRaises(ProtocolError) as cm:
                parseClientFrame(payload, False, MAX)
            self.assertEqual(cm.exception.code, frames.ERR_MALFORMED)
        self.assertIn("nested deeper than 32", cm.exception.message)
        self.assertEqual(parse({"event": "client-x", "data": nested(31)}).data, nested(31))
        deep = json.dumps(nested(40))
        with self.assertRaises(ProtocolError):
            parse({"event": "pusher:subscribe", "data": deep})
        with self.assertRaises(ProtocolError) as cm:
            frames.presenceMember(json.dumps({"user_id": "u", "user_info": nested(40)}))
        self.assertIn("channel_data is nested deeper", cm.exception.message)
        with self.assertRaises(ProtocolError) as cm:
            frames.signinRequest(
                parse(
                    {
                        "event": "pusher:signin",
                        "data": {
                            "auth": "k:s",
                            "user_data": json.dumps({"id": "u", "x": nested(40)}),
                        },
                    }
                )
            )
        self.assertIn("user_data is nested deeper", cm.exception.message)

    def test_namesValidated(self) -> None:
        """Channels, user ids and event names with a trailing newline or other control
        characters are 4002 (pushsvc.names), in every place a frame names them."""
        for frame in (
            {"event": "client-x\n", "channel": "private-a"},
            {"event": "client-x\u202e", "channel": "private-a"},
            {"event": "client-x", "channel": "private-a\n"},
        ):
            self.assertCode(json.dumps(frame).encode())
        for channel in ("private-a\n", "#server-to-user-u1\n", "#server-to-user-a b"):
            with self.assertRaises(ProtocolError):
                frames.subscribeRequest(
                    parse({"event": "pusher:subscribe", "data": {"channel": channel}})
                )
            with self.assertRaises(ProtocolError):
                frames.unsubscribeChannel(
                    parse({"event": "pusher:unsubscribe", "data": {"channel": channel}})
                )
        self.assertEqual(
            frames.subscribeRequest(
                parse({"event": "pusher:subscribe", "data": {"channel": "#server-to-user-u1"}})
            ).channel,
            "#server-to-user-u1",
        )
        for userId in ("u\n", "a b", "x" * 201):
            with self.assertRaises(ProtocolError):
                frames.presenceMember(json.dumps({"user_id": userId}))
            with self.assertRaises(ProtocolError):
                frames.signinRequest(
                    parse(
                        {
                            "event": "pusher:signin",
                            "data": {"auth": "k:s", "user_data": json.dumps({"id": userId})},
                        }
                    )
                )

    def test_dataObjectOrString(self) -> None:
        """pusher:* data is accepted as an object (pusher-js) or as a JSON string."""
        a = parse({"event": "pusher:subscribe", "data": {"channel": "c"}})
        b = parse({"event": "pusher:subscribe", "data": json.dumps({"channel": "c"})})
        self.assertEqual(a, b)
        self.assertEqual(frames.subscribeRequest(a), frames.SubscribeRequest("c", None, None))

    def test_subscribeRequest(self) -> None:
        """Subscribe needs a valid channel name; auth and channel_data must be strings."""
        for data in [
            {},
            {"channel": 3},
            {"channel": "a b"},
            {"channel": "c", "auth": 1},
            {"channel": "c", "channel_data": {"user_id": 1}},
        ]:
            with self.assertRaises(ProtocolError):
                frames.subscribeRequest(parse({"event": "pusher:subscribe", "data": data}))
        with self.assertRaises(ProtocolError):
            frames.subscribeRequest(parse({"event": "pusher:subscribe", "data": [1]}))
        req = frames.subscribeRequest(
            parse(
                {
                    "event": "pusher:subscribe",
                    "data": {"channel": "presence-a", "auth": "k:s", "channel_data": "{}"},
                }
            )
        )
        self.assertEqual(req, frames.SubscribeRequest("presence-a", "k:s", "{}"))
        userChannel = {"event": "pusher:subscribe", "data": {"channel": "#server-to-user-u1"}}
        self.assertEqual(frames.subscribeRequest(parse(userChannel)).channel, "#server-to-user-u1")

    def test_presenceMember(self) -> None:
        """user_id may be a string or a number (kept as a string); anything else is refused."""
        self.assertEqual(
            frames.presenceMember('{"user_id":"u","user_info":{"n":1}}'),
            frames.Member("u", {"n": 1}),
        )
        self.assertEqual(frames.presenceMember('{"user_id":42}').userId, "42")
        for bad in [
            "nope",
            "[]",
            "{}",
            '{"user_id":null}',
            '{"user_id":true}',
            '{"user_id":""}',
            '{"user_id":[1]}',
        ]:
            with self.assertRaises(ProtocolError):
                frames.presenceMember(bad)

    def test_signin(self) -> None:
        """pusher:signin needs auth and user_data, a JSON object with a non-empty string id."""
        ok = frames.signinRequest(
            parse({"event": "pusher:signin", "data": {"auth": "k:s", "user_data": '{"id":"u"}'}})
        )
        self.assertEqual(ok.userId, "u")
        for userData in ['{"id":1}', '{"id":""}', "[]", "x"]:
            with self.assertRaises(ProtocolError):
                frames.signinRequest(
                    parse(
                        {"event": "pusher:signin", "data": {"auth": "k:s", "user_data": userData}}
                    )
                )

    def test_channelKinds(self) -> None:
        """Prefixes decide the kind; client events only on private and presence channels."""
        self.assertEqual(frames.channelKind("news"), "public")
        self.assertEqual(frames.channelKind("private-a"), "private")
        self.assertEqual(frames.channelKind("private-encrypted-a"), "private-encrypted")
        self.assertEqual(frames.channelKind("presence-a"), "presence")
        self.assertEqual(frames.channelKind("#server-to-user-1"), "user")
        self.assertTrue(frames.isCacheChannel("private-cache-a"))
        self.assertTrue(frames.isCacheChannel("presence-cache-a"))
        self.assertFalse(frames.isCacheChannel("private-a"))
        self.assertTrue(frames.takesClientEvents("private-cache-a"))
        self.assertFalse(frames.takesClientEvents("private-encrypted-a"))
        self.assertFalse(frames.takesClientEvents("news"))
        self.assertFalse(frames.isValidChannelName("#server-to-user-1"))

    def test_clientEventData(self) -> None:
        """Client event data is relayed as a string: objects compactly encoded, strings as sent."""
        f = parse({"event": "client-x", "channel": "private-a", "data": {"a": [1, 2]}})
        self.assertEqual(frames.clientEventData(f), '{"a":[1,2]}')
        f = parse({"event": "client-x", "channel": "private-a", "data": "hello"})
        self.assertEqual(frames.clientEventData(f), "hello")
        with self.assertRaises(ProtocolError):
            frames.clientEventData(parse({"event": "client-x", "data": {}}))


class EncodeTests(SynchronousTestCase):
    def test_connectionEstablished(self) -> None:
        """The handshake frame carries socket_id and activity_timeout in a JSON string."""
        frame = json.loads(frames.connectionEstablished("1.2", 120))
        self.assertEqual(frame["event"], "pusher:connection_established")
        self.assertEqual(json.loads(frame["data"]), {"socket_id": "1.2", "activity_timeout": 120})

    def test_errorDataIsObject(self) -> None:
        """pusher:error data is an object, not a string."""
        self.assertEqual(
            json.loads(frames.error(4002, "bad")),
            {"event": "pusher:error", "data": {"code": 4002, "message": "bad"}},
        )

    def test_subscriptionError(self) -> None:
        self.assertEqual(
            json.loads(frames.subscriptionError("private-a", "AuthError", "no", 401)),
            {
                "event": "pusher:subscription_error",
                "channel": "private-a",
                "data": {"type": "AuthError", "error": "no", "status": 401},
            },
        )

    def test_presenceSucceeded(self) -> None:
        frame = json.loads(
            frames.subscriptionSucceeded("presence-a", frames.presenceData({"1": {"n": "Ann"}}))
        )
        self.assertEqual(
            json.loads(frame["data"]),
            {"presence": {"ids": ["1"], "hash": {"1": {"n": "Ann"}}, "count": 1}},
        )

    def test_encodeEventCompact(self) -> None:
        self.assertEqual(
            frames.encodeEvent("e", "c", "d", "u"),
            b'{"event":"e","channel":"c","data":"d","user_id":"u"}',
        )

    def test_wsTextFrame(self) -> None:
        """Server frames are unmasked FIN text frames with the right length encoding."""
        self.assertEqual(frames.wsTextFrame(b"hi"), b"\x81\x02hi")
        self.assertEqual(frames.wsTextFrame(b"x" * 200)[:4], b"\x81\x7e\x00\xc8")
        self.assertEqual(
            frames.wsTextFrame(b"x" * 70000)[:10], b"\x81\x7f" + (70000).to_bytes(8, "big")
        )


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=300), st.booleans())
    def test_bytesNeverCrash(self, payload: bytes, binary: bool) -> None:
        """Arbitrary bytes parse or raise ProtocolError, nothing else."""
        try:
            parseClientFrame(payload, binary, MAX)
        except ProtocolError as e:
            self.assertIn(e.code, (frames.ERR_MALFORMED,))

    @settings(max_examples=300, deadline=None)
    @given(jsonValues)
    def test_jsonNeverCrash(self, value: Any) -> None:
        """Arbitrary JSON parses or raises ProtocolError, and so do the per-event helpers."""
        for obj in (
            value,
            {"event": "pusher:subscribe", "data": value},
            {"event": "pusher:signin", "data": value},
            {"event": "client-x", "channel": "private-a", "data": value},
        ):
            try:
                f = parse(obj)
                frames.subscribeRequest(f)
                frames.signinRequest(f)
                frames.unsubscribeChannel(f)
                frames.clientEventData(f)
            except ProtocolError:
                pass

    @settings(max_examples=200, deadline=None)
    @given(
        st.text(
            st.characters(exclude_categories=["Cc", "Cf", "Cs", "Zl", "Zp"]),
            min_size=1,
            max_size=50,
        ),
        st.one_of(st.none(), channelNames),
        jsonValues,
    )
    def test_roundTrip(self, event: str, channel: str | None, data: Any) -> None:
        """A valid frame parses back to what was encoded."""
        obj: dict[str, Any] = {"event": "client-" + event, "data": data}
        if channel is not None:
            obj["channel"] = channel
        f = parse(obj)
        self.assertEqual((f.event, f.channel, f.data), ("client-" + event, channel, data))
        sub = parse({"event": "pusher:subscribe", "data": json.dumps({"channel": channel or "c"})})
        self.assertEqual(frames.subscribeRequest(sub).channel, channel or "c")

    @settings(max_examples=200, deadline=None)
    @given(
        st.text(max_size=30),
        st.one_of(st.none(), channelNames),
        st.text(max_size=50),
        st.one_of(st.none(), st.text(max_size=10)),
    )
    def test_encodeDecode(
        self, event: str, channel: str | None, data: str, userId: str | None
    ) -> None:
        """Server frames are JSON that decodes back to their fields."""
        obj = json.loads(frames.encodeEvent(event, channel, data, userId))
        self.assertEqual(obj["event"], event)
        self.assertEqual(obj.get("channel"), channel)
        self.assertEqual(obj["data"], data)
        self.assertEqual(obj.get("user_id"), userId)
