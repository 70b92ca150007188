"""
Compatibility in a real browser: the official pusher-js that the chat page itself loads
(C{web/vendor/pusher.min.js}, the same version as the npm package C{tests/js} pins), on the
chat page under its own Content-Security-Policy, subscribes to a presence channel through the
chat's auth endpoint and receives an event published with the official Python `pusher` SDK.
"""

from __future__ import annotations

import json
from pathlib import Path

import pusher
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import requireService
from tests.syncserver import ServerProcess
from tests.test_browser import launchBrowser

PUSHER_JS = Path(__file__).resolve().parent / "js/node_modules/pusher-js/dist/web/pusher.min.js"
APP_ID, APP_KEY, SECRET = "777", "browser-key", "browser-secret"

WEB_PUSHER_JS = Path(__file__).resolve().parent.parent / "web/vendor/pusher.min.js"

# Run on the chat page (a page that Playwright made up would not count as loopback for
# Chromium's local-network checks, which then block the WebSocket), as a function: the page's
# CSP allows no inline script.
SETUP = """() => {
window.log = []; window.members = null; window.received = [];
(async () => {
  const r = await fetch('/api/session', {method: 'POST', credentials: 'same-origin',
    headers: {'Content-Type': 'application/json'}, body: JSON.stringify({name: 'Pat'})});
  window.log.push('session ' + r.status);
  const client = new Pusher('%(key)s', {
    wsHost: location.hostname, wsPort: Number(location.port), forceTLS: false,
    enabledTransports: ['ws'], cluster: 'local', disableStats: true,
    channelAuthorization: {endpoint: '/api/pusher/auth', transport: 'ajax'},
  });
  client.connection.bind('state_change', s => window.log.push('state ' + s.current));
  const channel = client.subscribe('presence-room-general');
  channel.bind('pusher:subscription_succeeded', m => {
    window.members = {count: m.count, me: m.me};
  });
  channel.bind('pusher:subscription_error', e => window.log.push('sub error ' + JSON.stringify(e)));
  channel.bind('sdk-event', data => window.received.push(data));
})();
}"""


class VendoredTests(SynchronousTestCase):
    def test_vendoredIsTheNpmPackage(self) -> None:
        """The page's pusher-js is byte for byte the npm package's build that tests/js pins."""
        if not PUSHER_JS.exists():
            requireService(
                "pusher-js", f"is not installed at {PUSHER_JS} (npm ci --prefix tests/js)"
            )
        self.assertEqual(WEB_PUSHER_JS.read_bytes(), PUSHER_JS.read_bytes())


class PusherJSBrowserTests(SynchronousTestCase):
    def setUp(self) -> None:
        if not PUSHER_JS.exists():
            requireService(
                "pusher-js", f"is not installed at {PUSHER_JS} (npm ci --prefix tests/js)"
            )
        self.browser = launchBrowser(self)
        self.server = ServerProcess(
            0,
            self.mktemp(),
            "--app-id",
            APP_ID,
            "--app-key",
            APP_KEY,
            env={"PUSHSVC_APP_SECRET": SECRET},
        )
        self.server.start()
        self.port = self.server.port
        self.addCleanup(self.server.kill)

    def test_presenceAndSDKEvent(self) -> None:
        """
        The chat page's pusher-js joins a presence channel via /api/pusher/auth and gets an
        SDK event.
        """
        page = self.browser.new_context().new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        console: list[str] = []
        page.on("console", lambda m: console.append(m.text))

        page.goto(self.server.url)
        page.wait_for_selector("#name-view:not([hidden])", timeout=10_000)  # booted, signed out
        self.assertEqual(page.evaluate("() => typeof Pusher"), "function")
        page.evaluate(SETUP % {"key": APP_KEY})
        try:
            page.wait_for_function("() => window.members !== null", timeout=10_000)
        except Exception:
            self.fail(
                f"no subscription: {page.evaluate('window.log')} {errors} {console}"
                + "".join(self.server.output[-20:])
            )
        members = page.evaluate("window.members")
        self.assertEqual(members["count"], 1)
        self.assertEqual(members["me"]["info"], {"name": "Pat"})
        sdk = pusher.Pusher(
            app_id=APP_ID, key=APP_KEY, secret=SECRET, host="127.0.0.1", port=self.port, ssl=False
        )
        sdk.trigger("presence-room-general", "sdk-event", {"hello": "browser", "n": 1})
        page.wait_for_function("() => window.received.length === 1", timeout=10_000)
        self.assertEqual(page.evaluate("window.received"), [{"hello": "browser", "n": 1}])
        users = sdk.users_info("presence-room-general")
        self.assertEqual([u["id"] for u in users["users"]], [members["me"]["id"]])
        self.assertEqual(errors, [], json.dumps(page.evaluate("window.log")))
