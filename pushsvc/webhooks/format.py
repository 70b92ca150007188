"""
Pusher's webhook format, pure code (no I/O). An app's backend receives

    POST {url}
    Content-Type: application/json
    X-Pusher-Key: {app key}
    X-Pusher-Signature: {hex HMAC-SHA256(app secret, raw body)}
    X-Pushsvc-Webhook-Id: {batch id: the same on every retry, so a receiver can drop duplicates}

    {"time_ms": 1700000000000, "events": [{"name": "channel_occupied", "channel": "c"}, ...]}

Event kinds and their fields (as Pusher documents them):

    channel_occupied, channel_vacated   channel
    member_added, member_removed        channel, user_id
    client_event                        channel, event, data, socket_id (+ user_id on presence)
    cache_miss                          channel
    subscription_count                  channel, subscription_count

A target is configured per app as C{{url, events = [...], headers = {...}}}: the event kinds it
wants (all when empty) and extra headers for the POST. L{parseWebhooks} turns the apps file's
C{webhooks = [...]} (or C{--webhook-url}) into L{WebhookTarget}s.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

OCCUPIED = "channel_occupied"
VACATED = "channel_vacated"
MEMBER_ADDED = "member_added"
MEMBER_REMOVED = "member_removed"
CLIENT_EVENT = "client_event"
CACHE_MISS = "cache_miss"
SUBSCRIPTION_COUNT = "subscription_count"
KINDS = (
    OCCUPIED,
    VACATED,
    MEMBER_ADDED,
    MEMBER_REMOVED,
    CLIENT_EVENT,
    CACHE_MISS,
    SUBSCRIPTION_COUNT,
)

KEY_HEADER = "X-Pusher-Key"
SIGNATURE_HEADER = "X-Pusher-Signature"
ID_HEADER = "X-Pushsvc-Webhook-Id"
# Headers a target may not set: ours, and those the HTTP client owns.
RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (KEY_HEADER, SIGNATURE_HEADER, ID_HEADER, "Content-Type", "Content-Length", "Host")
)
MAX_TARGETS = 10  # per app
MAX_URL = 2000

WebhookEvent = dict[str, str | int]


class WebhookConfigError(ValueError):
    """A webhook configuration that makes no sense; C{str()} is one sentence for the user."""


@dataclass(frozen=True)
class WebhookTarget:
    """Where an app's webhooks go: C{url}, the event kinds wanted (empty: all), extra headers."""

    url: str
    events: frozenset[str] = frozenset()
    headers: tuple[tuple[str, str], ...] = field(default=())

    def wants(self, kind: str) -> bool:
        return not self.events or kind in self.events


def checkURL(url: object) -> str:
    """C{url} if it is an absolute http(s) URL; raise L{WebhookConfigError} otherwise."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise WebhookConfigError(f"a webhook url must be a string of 1 to {MAX_URL} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookConfigError(f"webhook url {url!r} must be an absolute http:// or https:// URL")
    if any(ord(ch) < 33 for ch in url):
        raise WebhookConfigError(
            f"webhook url {url!r} must not contain spaces or control characters"
        )
    return url


def _parseOne(raw: object) -> WebhookTarget:
    if isinstance(raw, str):
        return WebhookTarget(checkURL(raw))
    if not isinstance(raw, Mapping):
        raise WebhookConfigError("each webhook is a URL or a table {url, events, headers}")
    unknown = set(raw).difference({"url", "events", "headers"})
    if unknown:
        raise WebhookConfigError(
            f"unknown webhook key(s) {', '.join(sorted(map(str, unknown)))}: "
            "use url, events and headers"
        )
    url = checkURL(raw.get("url"))
    events = raw.get("events", [])
    if not isinstance(events, list | tuple) or not all(isinstance(e, str) for e in events):
        raise WebhookConfigError(f"webhook {url}: events must be a list of event kinds")
    bad = [e for e in events if e not in KINDS]
    if bad:
        raise WebhookConfigError(
            f"webhook {url}: unknown event kind(s) {', '.join(bad)}; known: {', '.join(KINDS)}"
        )
    headers = raw.get("headers", {})
    if not isinstance(headers, Mapping):
        raise WebhookConfigError(f"webhook {url}: headers must be a table of name = value")
    pairs: list[tuple[str, str]] = []
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise WebhookConfigError(f"webhook {url}: header names and values must be strings")
        if not name or any(ch in name for ch in " :\r\n\t") or any(ch in value for ch in "\r\n"):
            raise WebhookConfigError(f"webhook {url}: header {name!r} is not a valid header")
        if name.lower() in RESERVED_HEADERS:
            raise WebhookConfigError(f"webhook {url}: header {name} is set by pushsvc itself")
        pairs.append((name, value))
    return WebhookTarget(url, frozenset(events), tuple(pairs))


def parseWebhooks(raw: object) -> tuple[WebhookTarget, ...]:
    """
    The targets of an app's C{webhooks} setting: a list whose items are a URL or a table
    C{{url, events = [...], headers = {...}}}; None means none.

    @raise WebhookConfigError: with one sentence saying what is wrong.
    """
    if raw is None:
        return ()
    if not isinstance(raw, list | tuple):
        raise WebhookConfigError("webhooks must be a list of URLs or {url, events, headers} tables")
    if len(raw) > MAX_TARGETS:
        raise WebhookConfigError(f"at most {MAX_TARGETS} webhooks per app")
    targets = tuple(_parseOne(item) for item in raw)
    urls = [t.url for t in targets]
    if len(set(urls)) != len(urls):
        raise WebhookConfigError("the same webhook url is given twice")
    return targets


# -- events --------------------------------------------------------------------------------------


def channelEvent(kind: str, channel: str) -> WebhookEvent:
    return {"name": kind, "channel": channel}


def memberEvent(kind: str, channel: str, userId: str) -> WebhookEvent:
    return {"name": kind, "channel": channel, "user_id": userId}


def clientEvent(
    channel: str, event: str, data: str, socketId: str, userId: str | None
) -> WebhookEvent:
    out: WebhookEvent = {
        "name": CLIENT_EVENT,
        "channel": channel,
        "event": event,
        "data": data,
        "socket_id": socketId,
    }
    if userId is not None:
        out["user_id"] = userId
    return out


def subscriptionCountEvent(channel: str, count: int) -> WebhookEvent:
    return {"name": SUBSCRIPTION_COUNT, "channel": channel, "subscription_count": count}


# -- the POST ------------------------------------------------------------------------------------


def encodeBody(timeMs: int, events: list[WebhookEvent]) -> bytes:
    """The raw body of one batch (the bytes that are signed)."""
    return json.dumps(
        {"time_ms": timeMs, "events": events}, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def sign(secret: str, body: bytes) -> str:
    """Pusher's C{X-Pusher-Signature}: hex HMAC-SHA256 of the raw body with the app secret."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def requestHeaders(
    key: str, secret: str, batchId: str, body: bytes, extra: tuple[tuple[str, str], ...] = ()
) -> dict[str, str]:
    """Every header of one POST: the target's extra ones, then ours."""
    headers = dict(extra)
    headers.update(
        {
            "Content-Type": "application/json",
            KEY_HEADER: key,
            SIGNATURE_HEADER: sign(secret, body),
            ID_HEADER: batchId,
        }
    )
    return headers


def describeURL(url: str) -> str:
    """C{url} for logs: scheme, host, port and path; no user, password or query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
