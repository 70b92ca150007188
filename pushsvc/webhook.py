"""
The simple signed webhook, mounted at C{/notify}: "something changed on channel C".

    POST /notify/{channel}
    X-Pushsvc-Timestamp: <unix seconds>
    X-Pushsvc-Signature: sha256=<hex HMAC-SHA256(app secret, timestamp.channel.raw body)>

    {"event": "updated", "data": {...}}       (both optional; the body may be empty)

publishes C{event} (default C{updated}) with C{data} (default C{{}}; anything but a string is
JSON-encoded) on C{channel} of the default app, and answers 202 C{{"ok": true}}. The channel in
the signed string is the path segment percent-decoded (C{%23server-to-user-u1} is signed as
C{#server-to-user-u1}), so a call signed for one channel is refused (401) on any other. A
timestamp more than 5 minutes off is refused (401), and a signature already accepted in that
time is refused with 409 (on every node, with C{--redis}): to send the same notification twice,
sign it again a second later. From a shell:

    ts=$(date +%s); channel=my-channel; body='{"event":"updated"}'
    sig=$(printf '%s.%s.%s' "$ts" "$channel" "$body" |
          openssl dgst -sha256 -hmac "$SECRET" -hex | sed 's/^.* //')
    curl -X POST -H "X-Pushsvc-Timestamp: $ts" -H "X-Pushsvc-Signature: sha256=$sig" \\
         -H 'Content-Type: application/json' -d "$body" "http://localhost:8080/notify/$channel"

Errors: 400 bad channel name or body (JSON nested deeper than 32 levels included), 401 signature,
403 app disabled, 409 already accepted, 413 data too large, 503 broker down.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from twisted.logger import Logger
from twisted.web.server import Request

from pushsvc import names
from pushsvc.api import MAX_NAME, brokerCall, validChannel
from pushsvc.apiauth import NOTIFY_CLAIM_TTL, ApiAuthError, verifyNotify
from pushsvc.apps import App, Apps
from pushsvc.http.util import HTTPError, JSONResource, parseJSONObject, readBody
from pushsvc.interfaces import IHub

log = Logger()

DEFAULT_EVENT = "updated"
TIMESTAMP_HEADER = b"x-pushsvc-timestamp"
SIGNATURE_HEADER = b"x-pushsvc-signature"


def parseNotifyBody(body: bytes) -> tuple[str, str]:
    """
    The event name and data string of a webhook body. Unlike the Pusher API (which other SDKs
    call), unknown keys are refused here: a typo like C{"evnt"} should not pass silently.

    @raise HTTPError: 400 for a body that is not such a JSON object.
    """
    if not body.strip():
        return DEFAULT_EVENT, "{}"
    obj = parseJSONObject(body)
    unknown = set(obj).difference({"event", "data"})
    if unknown:
        raise HTTPError(400, f"Unknown field(s) {', '.join(sorted(unknown))}: use event and data.")
    event = obj.get("event", DEFAULT_EVENT)
    if not names.isEventName(event):
        raise HTTPError(
            400, f"event must be a string of 1 to {MAX_NAME} characters, none of them control ones."
        )
    if event.startswith(("pusher:", "pusher_internal:")):
        raise HTTPError(400, "Event names starting with pusher: are reserved for the protocol.")
    data = obj.get("data", {})
    if not isinstance(data, str):
        data = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return event, data


def _header(request: Request, name: bytes) -> str | None:
    value = request.getHeader(name)
    return None if value is None else value.decode("latin-1").strip()


class NotifyResource(JSONResource):
    """C{POST /notify/{channel}}; see the module docstring."""

    def __init__(self, apps: Apps, hub: IHub, now: Callable[[], float]) -> None:
        super().__init__()
        self.apps = apps
        self.hub = hub
        self.now = now

    def handle_POST(self, request: Request) -> Coroutine[Any, Any, tuple[int, Any]]:
        postpath = request.postpath or []
        if len(postpath) != 1 or not postpath[0]:
            raise HTTPError(404, "Say which channel: POST /notify/{channel}.")
        try:
            channel = validChannel(bytes(postpath[0]).decode("utf-8"))
        except UnicodeDecodeError:
            raise HTTPError(400, "The channel name is not valid UTF-8.") from None
        app = self.apps.default
        body = readBody(request)
        try:
            signature = verifyNotify(
                app,
                _header(request, TIMESTAMP_HEADER),
                _header(request, SIGNATURE_HEADER),
                channel,
                body,
                self.now(),
            )
        except ApiAuthError as e:
            raise HTTPError(e.status, e.message) from None
        if not app.enabled:
            raise HTTPError(403, "This app is disabled.")
        event, data = parseNotifyBody(body)
        if len(data.encode("utf-8")) > app.maxDataBytes:
            raise HTTPError(413, f"data is larger than {app.maxDataBytes} bytes.")
        return self.publish(app, channel, event, data, signature)

    async def publish(
        self, app: App, channel: str, event: str, data: str, signature: str
    ) -> tuple[int, Any]:
        # Claimed before publishing, so two copies sent at once cannot both go out.
        if not await brokerCall(self.hub.claim, app, signature, NOTIFY_CLAIM_TTL):
            raise HTTPError(
                409,
                "This signed call was already accepted; sign each notification anew "
                "(a new timestamp or body) to send it again.",
            )
        await brokerCall(self.hub.publish, app, [channel], event, data, None)
        log.debug("webhook published {event} on {channel}", event=event, channel=channel)
        return 202, {"ok": True}
