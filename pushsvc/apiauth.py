"""
Signatures of requests coming in: the Pusher HTTP API and the C{/notify} webhook. Pure, no I/O.

HTTP API (pusher-protocol.md, "HTTP API"): every request carries C{auth_key}, C{auth_timestamp},
C{auth_version=1.0}, C{auth_signature} and, when it has a body, C{body_md5}; the signature is
C{hex(HMAC-SHA256(secret, METHOD + "\\n" + PATH + "\\n" + QUERY))} where QUERY is every parameter
but C{auth_signature}, keys lower-cased, sorted, joined C{k=v&k=v}, not URL-escaped. Because keys
are lower-cased for signing, two names that differ only in case, or any name given twice, would
leave it open which value was signed: such a query is refused (400), and so is a parameter the
endpoint does not document (L{checkParameterNames}).

Webhook in: C{X-Pushsvc-Timestamp: <unix seconds>} and
C{X-Pushsvc-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + channel + "." + raw body)>}
where channel is the path segment after C{/notify/}, percent-decoded, so a captured call cannot
be sent to another channel. Channel names hold neither whitespace nor C{{}, and a body is empty
or a JSON object, so no two (channel, body) pairs that are accepted sign the same string. Within
its time window each signature is accepted once (the webhook claims it through the broker).

All comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping

from pushsvc.apps import App
from pushsvc.signing import hmacSHA256Hex

API_WINDOW = 600
NOTIFY_WINDOW = 300
# A signature is acceptable while its timestamp is within NOTIFY_WINDOW of the clock: at most
# 2 * NOTIFY_WINDOW seconds from the first moment it could be claimed (this margin also covers
# nodes whose clocks disagree by up to NOTIFY_WINDOW).
NOTIFY_CLAIM_TTL = 2.0 * NOTIFY_WINDOW
AUTH_VERSION = "1.0"
REQUIRED_PARAMS = ("auth_key", "auth_timestamp", "auth_version", "auth_signature")
AUTH_PARAMS = (*REQUIRED_PARAMS, "body_md5")
SIGNATURE_PREFIX = "sha256="

_timestamp = re.compile(r"\A[0-9]{1,12}\Z")


class ApiAuthError(Exception):
    """A request is not signed as it must be: answer C{status} with C{message}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def canonicalQuery(params: Mapping[str, str]) -> str:
    """The QUERY of the string to sign: C{auth_signature} left out, keys lower-cased, sorted."""
    items = sorted((k.lower(), v) for k, v in params.items() if k.lower() != "auth_signature")
    return "&".join(f"{k}={v}" for k, v in items)


def checkParameterNames(names: Iterable[str], allowed: Iterable[str] = ()) -> None:
    """
    Refuse a query whose names repeat, in any case, or are neither L{AUTH_PARAMS} nor C{allowed}.

    @raise ApiAuthError: 400 naming the parameter.
    """
    known = set(AUTH_PARAMS).union(allowed)
    seen: set[str] = set()
    unknown = None
    for name in names:
        folded = name.lower()
        if folded in seen:
            raise ApiAuthError(
                400,
                f"The parameter {name!r} is given more than once (names are compared "
                "without case).",
            )
        seen.add(folded)
        if unknown is None and name not in known:
            unknown = name
    if unknown is not None:
        raise ApiAuthError(
            400, f"Unknown parameter {unknown!r}: this endpoint takes {', '.join(sorted(known))}."
        )


def stringToSign(method: str, path: str, params: Mapping[str, str]) -> str:
    return f"{method}\n{path}\n{canonicalQuery(params)}"


def apiSignature(secret: str, method: str, path: str, params: Mapping[str, str]) -> str:
    """The hex C{auth_signature} of an HTTP API request."""
    return hmacSHA256Hex(secret, stringToSign(method, path, params))


def bodyMd5(body: bytes) -> str:
    """The hex MD5 of the raw body, as sent in C{body_md5}."""
    return hashlib.md5(body, usedforsecurity=False).hexdigest()


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))


def _checkTimestamp(raw: str, now: float, window: int, name: str) -> None:
    if not _timestamp.match(raw):
        raise ApiAuthError(401, f"The {name} must be a whole number of seconds since 1970.")
    if abs(now - int(raw)) > window:
        raise ApiAuthError(
            401,
            f"The {name} {raw} is not within {window} seconds of the server time "
            f"{int(now)}: check the clock of the sender.",
        )


def verifyApiRequest(
    app: App,
    method: str,
    path: str,
    params: Mapping[str, str],
    body: bytes,
    now: float,
    window: int = API_WINDOW,
    rawPath: str | None = None,
) -> None:
    """
    Check that an HTTP API request is signed with C{app}'s secret, recently.

    @param path: the request path without the query, percent-decoded (what the SDKs sign).
    @param params: the query parameters, one value each, percent-decoded.
    @param rawPath: the path as sent, when it differs: a signature over it is accepted too, for
        clients that sign the escaped form. (Names in paths cannot hold C{%}, so the two forms
        never stand for different requests.)
    @raise ApiAuthError: 401 naming what is wrong.
    """
    missing = [name for name in REQUIRED_PARAMS if name not in params]
    if body and "body_md5" not in params:
        missing.append("body_md5")
    if missing:
        raise ApiAuthError(401, f"Missing authentication parameter(s): {', '.join(missing)}.")
    if not _same(params["auth_key"], app.key):
        raise ApiAuthError(401, "Unknown auth_key for this app.")
    if params["auth_version"] != AUTH_VERSION:
        raise ApiAuthError(401, f"Unsupported auth_version: only {AUTH_VERSION} is known.")
    _checkTimestamp(params["auth_timestamp"], now, window, "auth_timestamp")
    if "body_md5" in params and not _same(params["body_md5"], bodyMd5(body)):
        raise ApiAuthError(401, "The body_md5 does not match the MD5 of the request body.")
    toSign = stringToSign(method, path, params)
    given = params["auth_signature"]
    ok = _same(given, hmacSHA256Hex(app.secret, toSign))
    if rawPath is not None and rawPath != path:
        ok |= _same(given, apiSignature(app.secret, method, rawPath, params))
    if not ok:
        # Telling the string we signed (never the signature) is what Pusher does: it lets a
        # developer find a path or parameter mismatch without revealing anything secret.
        raise ApiAuthError(401, f"Invalid signature: the string to sign was {toSign!r}.")


def notifySignature(secret: str, timestamp: str, channel: str, body: bytes) -> str:
    """
    The hex HMAC-SHA256 of C{timestamp + "." + channel + "." + body} that C{X-Pushsvc-Signature}
    carries.
    """
    return hmacSHA256Hex(
        secret, timestamp.encode("utf-8") + b"." + channel.encode("utf-8") + b"." + body
    )


def verifyNotify(
    app: App,
    timestampHeader: str | None,
    signatureHeader: str | None,
    channel: str,
    body: bytes,
    now: float,
    window: int = NOTIFY_WINDOW,
) -> str:
    """
    Check the C{X-Pushsvc-Timestamp} / C{X-Pushsvc-Signature} headers of a webhook call to
    C{channel} (the percent-decoded path segment).

    @return: the signature (lower-case hex): the key under which to claim the call, so that it
        is accepted once (L{NOTIFY_CLAIM_TTL}).
    @raise ApiAuthError: 401 when a header is missing, the timestamp is more than C{window}
        seconds off (a replay or a wrong clock), or the signature does not match.
    """
    if not timestampHeader or not signatureHeader:
        raise ApiAuthError(
            401, "Sign the request: X-Pushsvc-Timestamp and X-Pushsvc-Signature are needed."
        )
    _checkTimestamp(timestampHeader, now, window, "X-Pushsvc-Timestamp")
    if not signatureHeader.startswith(SIGNATURE_PREFIX):
        raise ApiAuthError(401, "X-Pushsvc-Signature must look like sha256=<hex>.")
    given = signatureHeader[len(SIGNATURE_PREFIX) :].lower()
    expected = notifySignature(app.secret, timestampHeader, channel, body)
    if not _same(given, expected):
        raise ApiAuthError(
            401, "The X-Pushsvc-Signature does not match: sign timestamp.channel.body."
        )
    return expected
