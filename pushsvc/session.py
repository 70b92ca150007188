"""
Signed chat sessions: the cookie carries a random session id, the user id, the display name and
its expiry, signed with a server key.

Any process that has the same key accepts a cookie that another issued, so sessions need no
shared storage to be checked; only signing out does (the chat records the revoked session id in
the store until the cookie would expire, see L{pushsvc.chat}).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass

COOKIE_NAME = b"pushsvc_session"
MAX_AGE = 30 * 24 * 3600


@dataclass(frozen=True)
class Session:
    userId: str
    name: str
    sessionId: str = ""  # random per sign-in: what signing out revokes
    expires: int = 0  # when the cookie expires, seconds since the epoch


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    """Issues and checks session cookie values: C{payload.signature}, both base64url."""

    def __init__(self, key: bytes, now: Callable[[], float]) -> None:
        self._key = key
        self._now = now

    def _sign(self, payload: str) -> str:
        mac = hmac.new(self._key, b"session:" + payload.encode("ascii"), hashlib.sha256)
        return _b64(mac.digest())

    def issue(self, name: str, userId: str | None = None) -> tuple[str, Session]:
        """A new session (cookie value and L{Session}) for C{name}: a new user, or C{userId}
        again when an existing user changes name (the user id is who wrote what)."""
        session = Session(
            userId=userId or secrets.token_hex(8),
            name=name,
            sessionId=secrets.token_urlsafe(16),
            expires=int(self._now()) + MAX_AGE,
        )
        body = {"u": session.userId, "n": name, "s": session.sessionId, "e": session.expires}
        payload = _b64(json.dumps(body, separators=(",", ":")).encode("utf-8"))
        return f"{payload}.{self._sign(payload)}", session

    def verify(self, value: str) -> Session | None:
        """The session of a cookie value, or None when it is forged, malformed or expired."""
        payload, sep, signature = value.partition(".")
        if not sep or not payload.isascii() or not signature.isascii():
            return None
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            return None
        try:
            body = json.loads(_unb64(payload))
            userId, name, expires = body["u"], body["n"], body["e"]
            # Cookies issued before sessions had their own id are revoked by their user id,
            # which is random per sign-in too (revoking needs the cookie, not just the id).
            sessionId = body.get("s", userId)
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        if not all(isinstance(v, str) for v in (userId, name, sessionId)):
            return None
        if not isinstance(expires, int) or expires < self._now():
            return None
        return Session(userId=userId, name=name, sessionId=sessionId, expires=expires)
