"""Signed, stateless session cookies."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from pushsvc.session import MAX_AGE, Session, SessionSigner, _b64


class SessionSignerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.now = 1_000_000.0
        self.signer = SessionSigner(b"k" * 32, lambda: self.now)

    def test_roundTrip(self) -> None:
        """A cookie issued for a name verifies to the same user id and name."""
        value, session = self.signer.issue("Ann <b>")
        self.assertEqual(self.signer.verify(value), session)
        self.assertEqual(session.name, "Ann <b>")

    def test_otherProcessSameKey(self) -> None:
        """Another signer with the same key (another process) accepts the cookie."""
        value, session = self.signer.issue("Bo")
        other = SessionSigner(b"k" * 32, lambda: self.now)
        self.assertEqual(other.verify(value), session)

    def test_forged(self) -> None:
        """A cookie signed with another key, or altered, is refused."""
        value, _ = SessionSigner(b"x" * 32, lambda: self.now).issue("Eve")
        self.assertIsNone(self.signer.verify(value))
        good, _ = self.signer.issue("Ann")
        payload, sig = good.split(".")
        self.assertIsNone(self.signer.verify(payload + "A." + sig))
        self.assertIsNone(self.signer.verify(payload + "." + sig[:-2]))
        for junk in ["", ".", "abc", "a.b.c", "\u00e9.x"]:
            self.assertIsNone(self.signer.verify(junk))

    def test_expired(self) -> None:
        value, _ = self.signer.issue("Ann")
        self.now += MAX_AGE + 1
        self.assertIsNone(self.signer.verify(value))

    def test_sessionIds(self) -> None:
        """Each sign-in gets its own random session id and the cookie's expiry, which verify
        returns; even the same name signed in twice gets two sessions."""
        one, first = self.signer.issue("Ann")
        two, second = self.signer.issue("Ann")
        self.assertNotEqual(first.sessionId, second.sessionId)
        self.assertGreaterEqual(len(first.sessionId), 20)
        self.assertEqual(first.expires, int(self.now) + MAX_AGE)
        self.assertEqual(self.signer.verify(one), first)
        self.assertEqual(self.signer.verify(two), second)

    def test_olderCookies(self) -> None:
        """A cookie from before session ids is still accepted, and revoked by its user id."""
        payload = _b64(json.dumps({"u": "u1", "n": "Ann", "e": int(self.now) + 10}).encode())
        session = self.signer.verify(f"{payload}.{self.signer._sign(payload)}")
        self.assertEqual(session, Session("u1", "Ann", "u1", int(self.now) + 10))
        for body in [{"u": "u1", "n": "Ann", "e": 2**40, "s": 5}, [1, 2]]:
            payload = _b64(json.dumps(body).encode())
            self.assertIsNone(self.signer.verify(f"{payload}.{self.signer._sign(payload)}"))
