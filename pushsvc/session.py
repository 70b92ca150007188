"""
Stateless chat sessions: the cookie carries the user id and display name, signed with a server key.

Any process that has the same key accepts a cookie that another issued, so sessions need no
shared storage.
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

    def issue(self, name: str) -> tuple[str, Session]:
        session = Session(userId=secrets.token_hex(8), name=name)
        body = {"u": session.userId, "n": name, "e": int(self._now()) + MAX_AGE}
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
        except (ValueError, KeyError, TypeError):
            return None
        if not (isinstance(userId, str) and isinstance(name, str) and isinstance(expires, int)):
            return None
        if expires < self._now():
            return None
        return Session(userId=userId, name=name)
