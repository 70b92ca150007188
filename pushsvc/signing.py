"""
HMAC-SHA256 signatures of the Pusher protocol: channel subscriptions and user sign-in.

All comparisons are constant-time. See pusher-protocol.md for the formats and test vectors.
"""

from __future__ import annotations

import hashlib
import hmac

from pushsvc.apps import App


def hmacSHA256Hex(secret: str, message: str | bytes) -> str:
    if isinstance(message, str):
        message = message.encode("utf-8")
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def channelSignature(
    secret: str, socketId: str, channel: str, channelData: str | None = None
) -> str:
    """The hex signature of a private (no C{channelData}) or presence subscription."""
    message = f"{socketId}:{channel}"
    if channelData is not None:
        message += f":{channelData}"
    return hmacSHA256Hex(secret, message)


def channelAuth(app: App, socketId: str, channel: str, channelData: str | None = None) -> str:
    """The C{auth} field a client sends: C{"key:signature"}."""
    return f"{app.key}:{channelSignature(app.secret, socketId, channel, channelData)}"


def userSignature(secret: str, socketId: str, userData: str) -> str:
    return hmacSHA256Hex(secret, f"{socketId}::user::{userData}")


def userAuth(app: App, socketId: str, userData: str) -> str:
    return f"{app.key}:{userSignature(app.secret, socketId, userData)}"


def _verify(app: App, auth: object, expected: str) -> bool:
    if not isinstance(auth, str):
        return False
    key, sep, signature = auth.partition(":")
    if not sep:
        return False
    keyOK = hmac.compare_digest(key.encode("utf-8", "replace"), app.key.encode("utf-8"))
    sigOK = hmac.compare_digest(signature.encode("utf-8", "replace"), expected.encode("ascii"))
    return keyOK and sigOK


def verifyChannelAuth(
    app: App, socketId: str, channel: str, auth: object, channelData: str | None = None
) -> bool:
    """Whether C{auth} (C{"key:sig"}) signs this subscription for C{app}."""
    return _verify(app, auth, channelSignature(app.secret, socketId, channel, channelData))


def verifyUserAuth(app: App, socketId: str, auth: object, userData: str) -> bool:
    """Whether C{auth} (C{"key:sig"}) signs this sign-in for C{app}."""
    return _verify(app, auth, userSignature(app.secret, socketId, userData))
