"""Signed, stateless session cookies."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from pushsvc.session import MAX_AGE, SessionSigner


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
