"""Signatures of the HTTP API and of the /notify webhook: vectors, tampering, properties."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pusher
import pusher.http
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pushsvc.apiauth import (
    ApiAuthError,
    apiSignature,
    bodyMd5,
    canonicalQuery,
    checkParameterNames,
    notifySignature,
    verifyApiRequest,
    verifyNotify,
)
from pushsvc.apps import App
from pushsvc.signing import channelSignature

KEY = "278d425bdf160c739803"
SECRET = "7ad3773142a6692b25b8"
APP = App("3", KEY, SECRET)
BODY = b'{"name":"foo","channels":["project-3"],"data":"{\\"some\\":\\"data\\"}"}'
TIMESTAMP = 1353088179
PATH = "/apps/3/events"
CHANNEL_CHARS = "-abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_=@,.;"


def docParams() -> dict[str, str]:
    """The parameters of the doc's vector, signature included."""
    params = {
        "auth_key": KEY,
        "auth_timestamp": str(TIMESTAMP),
        "auth_version": "1.0",
        "body_md5": bodyMd5(BODY),
    }
    params["auth_signature"] = apiSignature(SECRET, "POST", PATH, params)
    return params


def signed(
    method: str, path: str, query: dict[str, str], body: bytes, app: App = APP, ts: int = TIMESTAMP
) -> dict[str, str]:
    params = dict(query, auth_key=app.key, auth_timestamp=str(ts), auth_version="1.0")
    if body:
        params["body_md5"] = bodyMd5(body)
    params["auth_signature"] = apiSignature(app.secret, method, path, params)
    return params


class VectorTests(SynchronousTestCase):
    def test_bodyMd5(self) -> None:
        """The doc's body hashes to the doc's MD5."""
        self.assertEqual(bodyMd5(BODY), "ec365a775a4cd0599faeb73354201b6f")

    def test_apiVector(self) -> None:
        """
        The doc's HTTP API vector: POST /apps/3/events with auth_key, auth_timestamp,
        auth_version=1.0 and body_md5 signs to the doc's signature, and verifies.
        """
        params = docParams()
        self.assertEqual(
            params["auth_signature"],
            "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c",
        )
        verifyApiRequest(APP, "POST", PATH, params, BODY, now=TIMESTAMP + 1.5)

    def test_stringToSign(self) -> None:
        """The query is sorted by lower-cased key, auth_signature left out, nothing escaped."""
        query = canonicalQuery({"b": "x y", "A": "1&2", "auth_signature": "zz"})
        self.assertEqual(query, "a=1&2&b=x y")

    def test_channelVector(self) -> None:
        """The doc's private-channel vector, through pushsvc.signing.channelSignature."""
        self.assertEqual(
            channelSignature(SECRET, "1234.1234", "private-foobar"),
            "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4",
        )

    def test_notifySignature(self) -> None:
        """
        The webhook signature is hex HMAC-SHA256(secret, timestamp + "." + channel + "." + raw
        body), the channel percent-decoded; vectors with the doc's secret.
        """
        expected = hmac.new(
            SECRET.encode(), b"1700000000.public-orders.{}", hashlib.sha256
        ).hexdigest()
        self.assertEqual(
            expected, "12ad3a83e18c569c46b99dcd4a34bbd5300fd645b88d8c0866690ce5a72b99ef"
        )
        self.assertEqual(notifySignature(SECRET, "1700000000", "public-orders", b"{}"), expected)
        self.assertEqual(
            notifySignature(SECRET, "1700000000", "#server-to-user-u1", b'{"event":"updated"}'),
            "881721adff1af9c97e3dfa7dbfbfedf3106a6665279eb594eb784fb94de08e83",
        )

    def test_officialSDKSignatures(self) -> None:
        """Requests signed by the official pusher SDK verify, GET (empty body) and POST."""
        client = pusher.Pusher(app_id="3", key=KEY, secret=SECRET)._pusher_client
        get = pusher.http.Request(
            client,
            "GET",
            "/apps/3/channels",
            {"filter_by_prefix": "presence-", "info": "user_count"},
        )
        post = pusher.http.Request(
            client, "POST", PATH, {"name": "e", "data": "{}", "channels": ["a"]}
        )
        for request in (get, post):
            now = float(request.query_params["auth_timestamp"])
            verifyApiRequest(
                APP, request.method, request.path, request.query_params, request.body, now
            )


class TamperingTests(SynchronousTestCase):
    def assertRefused(self, params: dict[str, str], **kw: Any) -> ApiAuthError:
        args: dict[str, Any] = dict(
            method="POST", path=PATH, params=params, body=BODY, now=float(TIMESTAMP)
        )
        args.update(kw)
        e: ApiAuthError = self.assertRaises(ApiAuthError, verifyApiRequest, APP, **args)
        self.assertEqual(e.status, 401)
        return e

    def test_missingParameters(self) -> None:
        """Each auth parameter missing is refused, body_md5 too when there is a body."""
        for name in ("auth_key", "auth_timestamp", "auth_version", "auth_signature", "body_md5"):
            params = docParams()
            del params[name]
            e = self.assertRefused(params)
            self.assertIn(name, e.message)

    def test_bodyMd5OptionalWithoutBody(self) -> None:
        """A request with no body needs no body_md5, but one given must be the empty MD5."""
        params = signed("GET", "/apps/3/channels", {}, b"")
        verifyApiRequest(APP, "GET", "/apps/3/channels", params, b"", float(TIMESTAMP))
        params = signed("GET", "/apps/3/channels", {"body_md5": bodyMd5(b"")}, b"")
        verifyApiRequest(APP, "GET", "/apps/3/channels", params, b"", float(TIMESTAMP))
        params = signed("GET", "/apps/3/channels", {"body_md5": bodyMd5(b"x")}, b"")
        self.assertRefused(params, method="GET", path="/apps/3/channels", body=b"")

    def test_wrongKey(self) -> None:
        """Another app's key is refused, even with a signature made with that key."""
        other = App("3", "another-key", SECRET)
        self.assertRefused(signed("POST", PATH, {}, BODY, app=other))

    def test_wrongSecret(self) -> None:
        """A request signed with another secret is refused."""
        self.assertRefused(signed("POST", PATH, {}, BODY, app=App("3", KEY, "not-the-secret")))

    def test_authVersion(self) -> None:
        """Only auth_version 1.0 is known."""
        params = signed("POST", PATH, {}, BODY)
        params["auth_version"] = "2.0"
        params["auth_signature"] = apiSignature(SECRET, "POST", PATH, params)
        self.assertRefused(params)

    def test_timestampWindow(self) -> None:
        """A timestamp 600 s off either way passes; 601 s off or not a number is refused."""
        params = docParams()
        verifyApiRequest(APP, "POST", PATH, params, BODY, now=TIMESTAMP + 600.0)
        verifyApiRequest(APP, "POST", PATH, params, BODY, now=TIMESTAMP - 600.0)
        self.assertRefused(params, now=TIMESTAMP + 601.0)
        self.assertRefused(params, now=TIMESTAMP - 601.0)
        for bad in ("", "abc", "1353088179.5", "-1", " 1353088179"):
            params = signed("POST", PATH, {}, BODY)
            params["auth_timestamp"] = bad
            params["auth_signature"] = apiSignature(SECRET, "POST", PATH, params)
            self.assertRefused(params)

    def test_tamperedFields(self) -> None:
        """Changing the method, path, body, signature or any signed parameter is refused."""
        self.assertRefused(docParams(), method="PUT")
        self.assertRefused(docParams(), path="/apps/3/batch_events")
        self.assertRefused(docParams(), body=BODY.replace(b"foo", b"fob"))
        params = docParams()
        params["auth_signature"] = params["auth_signature"][:-1] + "0"
        self.assertRefused(params)
        params = docParams()
        params["auth_signature"] = params["auth_signature"].upper()
        self.assertRefused(params)
        params = docParams()
        params["extra"] = "1"
        self.assertRefused(params)
        params = docParams()
        params["auth_timestamp"] = str(TIMESTAMP + 1)
        self.assertRefused(params)

    def test_signatureErrorShowsStringToSign(self) -> None:
        """A wrong signature's error tells the string that was signed, never the signature."""
        params = docParams()
        params["auth_signature"] = "0" * 64
        e = self.assertRefused(params)
        self.assertIn("POST\\n/apps/3/events\\nauth_key=", e.message)
        self.assertNotIn(docParams()["auth_signature"], e.message)


_keys = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8).filter(
    lambda k: not k.startswith("auth_") and k != "body_md5"
)
_requests = st.tuples(
    st.sampled_from(["GET", "POST"]),
    st.text(min_size=1, max_size=30).map(lambda p: "/apps/3/" + p),
    st.dictionaries(_keys, st.text(max_size=20), max_size=4),
    st.binary(min_size=1, max_size=200),
    st.integers(min_value=0, max_value=2**33),
)


def _changeOne(value: str, index: int, replacement: str) -> str:
    index %= len(value)
    if replacement == value[index]:
        replacement = chr(ord(replacement) + 1)
    return value[:index] + replacement + value[index + 1 :]


class PropertyTests(SynchronousTestCase):
    @given(_requests)
    def test_signedVerifies(self, request: tuple[str, str, dict[str, str], bytes, int]) -> None:
        """Any request signed with the app's secret verifies at its own timestamp."""
        method, path, query, body, ts = request
        params = signed(method, path, query, body, ts=ts)
        verifyApiRequest(APP, method, path, params, body, float(ts))

    @given(_requests, st.integers(min_value=0), st.binary(min_size=1, max_size=1))
    def test_bodyChangeFails(
        self, request: tuple[str, str, dict[str, str], bytes, int], index: int, byte: bytes
    ) -> None:
        """Changing any one byte of a signed body is refused."""
        method, path, query, body, ts = request
        params = signed(method, path, query, body, ts=ts)
        index %= len(body)
        if body[index : index + 1] == byte:
            byte = bytes([(byte[0] + 1) % 256])
        tampered = body[:index] + byte + body[index + 1 :]
        self.assertRaises(
            ApiAuthError, verifyApiRequest, APP, method, path, params, tampered, float(ts)
        )

    @given(
        _requests,
        st.integers(min_value=0),
        st.integers(min_value=0),
        st.characters(max_codepoint=0xFFFE, exclude_categories=["Cs"]),
    )
    def test_paramChangeFails(
        self,
        request: tuple[str, str, dict[str, str], bytes, int],
        which: int,
        index: int,
        char: str,
    ) -> None:
        """Changing any one character of any parameter's value is refused."""
        method, path, query, body, ts = request
        params = signed(method, path, query, body, ts=ts)
        names = sorted(name for name, value in params.items() if value)
        name = names[which % len(names)]
        params[name] = _changeOne(params[name], index, char)
        self.assertRaises(
            ApiAuthError, verifyApiRequest, APP, method, path, params, body, float(ts)
        )


class ParameterNameTests(SynchronousTestCase):
    def test_documented(self) -> None:
        """The auth parameters, body_md5 and the endpoint's own parameters pass."""
        checkParameterNames(
            ["auth_key", "auth_timestamp", "auth_version", "auth_signature", "body_md5", "info"],
            ["info"],
        )

    def test_refused(self) -> None:
        """A name given twice, in any case, or one the endpoint does not take is 400."""
        for query, allowed in (
            (["auth_signature", "Auth_Signature"], ()),
            (["auth_key", "AUTH_KEY"], ()),
            (["info", "info"], ["info"]),
            (["info", "INFO"], ["info"]),
            (["Auth_Signature"], ()),
            (["extra"], ()),
            (["info"], ()),
            (["filter_by_prefix"], ["info"]),
        ):
            e = self.assertRaises(ApiAuthError, checkParameterNames, query, allowed)
            self.assertEqual(e.status, 400, query)


class NotifyTests(SynchronousTestCase):
    NOW = 1_700_000_000.0
    CHANNEL = "public-orders"

    def header(self, ts: str, body: bytes, secret: str = SECRET, channel: str = CHANNEL) -> str:
        return "sha256=" + notifySignature(secret, ts, channel, body)

    def test_verifies(self) -> None:
        """A fresh, correctly signed call verifies, returning the signature (lower-case hex, the
        claim key); the hex may be sent upper case."""
        ts = str(int(self.NOW))
        header = self.header(ts, b'{"a":1}')
        self.assertEqual(
            verifyNotify(APP, ts, header, self.CHANNEL, b'{"a":1}', self.NOW),
            header[len("sha256=") :],
        )
        upper = "sha256=" + notifySignature(SECRET, ts, self.CHANNEL, b"").upper()
        verifyNotify(APP, ts, upper, self.CHANNEL, b"", self.NOW)

    def test_channelBound(self) -> None:
        """A call signed for one channel is refused on any other, the user channels too."""
        ts = str(int(self.NOW))
        header = self.header(ts, b"{}")
        for other in (
            "private-admin",
            "#server-to-user-u1",
            "public-orders2",
            "public-order",
            "public-orders.",
            "",
        ):
            e = self.assertRaises(
                ApiAuthError, verifyNotify, APP, ts, header, other, b"{}", self.NOW
            )
            self.assertEqual(e.status, 401, other)

    def test_replayWindow(self) -> None:
        """A timestamp more than 5 minutes in the past or future is refused; 300 s passes."""
        for offset, ok in ((-300, True), (300, True), (-301, False), (301, False)):
            ts = str(int(self.NOW) + offset)
            args = (APP, ts, self.header(ts, b""), self.CHANNEL, b"", self.NOW)
            if ok:
                verifyNotify(*args)
            else:
                self.assertEqual(self.assertRaises(ApiAuthError, verifyNotify, *args).status, 401)

    def test_refused(self) -> None:
        """Missing headers, a bad prefix, a wrong secret or a changed body are refused."""
        ts = str(int(self.NOW))
        good = self.header(ts, b"{}")
        cases = [
            (None, good, b"{}"),
            (ts, None, b"{}"),
            ("", good, b"{}"),
            ("soon", good, b"{}"),
            (ts, good[len("sha256=") :], b"{}"),
            (ts, "sha1=" + good[len("sha256=") :], b"{}"),
            (ts, self.header(ts, b"{}", secret="other"), b"{}"),
            (ts, good, b"{ }"),
            (str(int(self.NOW) - 1), good, b"{}"),
            # the old format, timestamp + "." + body, no longer verifies
            (
                ts,
                "sha256="
                + hmac.new(SECRET.encode(), ts.encode() + b".{}", hashlib.sha256).hexdigest(),
                b"{}",
            ),
        ]
        for timestamp, signature, body in cases:
            e = self.assertRaises(
                ApiAuthError, verifyNotify, APP, timestamp, signature, self.CHANNEL, body, self.NOW
            )
            self.assertEqual(e.status, 401)

    @given(
        st.text(CHANNEL_CHARS, min_size=1, max_size=40),
        st.text(CHANNEL_CHARS, min_size=1, max_size=40),
        st.sampled_from([b"", b"{}", b'{"event":"e","data":{"a":[1]}}']),
    )
    def test_otherChannelFails(self, channel: str, other: str, body: bytes) -> None:
        """A signature for one channel never verifies for another, whatever the two are."""
        ts = str(int(self.NOW))
        header = self.header(ts, body, channel=channel)
        verifyNotify(APP, ts, header, channel, body, self.NOW)
        if other != channel:
            self.assertRaises(ApiAuthError, verifyNotify, APP, ts, header, other, body, self.NOW)
