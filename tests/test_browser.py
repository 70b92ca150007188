"""
End-to-end: the chat in headless Chromium (Debian's), driven by Playwright, against a real
C{twistd -n pushsvc} child process, under the page's own Content-Security-Policy (no
C{bypass_csp}): the page's live connection is the vendored pusher-js.

Every C{wait_for_function} here is given a function (C{"() => ..."} or C{"n => ..."}), never a
bare expression: Playwright compiles a function once, but re-runs C{eval} on a bare expression
at every poll, which the page's CSP (no C{'unsafe-eval'}) refuses, so such a wait failed
whenever its condition was not already true at the first check.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.cutproxy import BlockingCuttableProxy as CuttableProxy
from tests.helpers import requireService
from tests.syncserver import ServerProcess

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
WAIT_MS = 10_000
PUSHER_JS_VERSION = json.loads(
    (Path(__file__).resolve().parent / "js" / "package.json").read_text()
)["dependencies"]["pusher-js"]


def launchBrowser(case: SynchronousTestCase, *extraArgs: str) -> Any:
    """
    A Playwright Chromium browser (with C{extraArgs} after the usual ones), closed at cleanup;
    skips (fails in CI) without one.
    """
    if not os.path.exists(CHROMIUM):
        requireService("Chromium", f"is not installed at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        requireService("Playwright", "is not installed (pip install playwright)")
    manager = sync_playwright().start()
    case.addCleanup(manager.stop)
    browser = manager.chromium.launch(
        executable_path=CHROMIUM, args=[*ARGS, *extraArgs], headless=True
    )
    case.addCleanup(browser.close)
    return browser


class ChatPage:
    """One person's chat tab."""

    def __init__(self, browser: Any, base: str, name: str, room: str = "general") -> None:
        self.context = browser.new_context(viewport={"width": 1100, "height": 720})
        self.page = self.context.new_page()
        self.dialogs: list[str] = []
        self.page.on("dialog", self._dismiss)
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.sockets: list[str] = []
        self.page.on("websocket", lambda ws: self.sockets.append(ws.url))
        self.page.goto(f"{base}/#room={room}")
        self.page.fill("#name-input", name)
        self.page.click("#name-submit")
        self.waitConnected()

    def _dismiss(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def waitConnected(self, timeout: int = WAIT_MS) -> None:
        self.page.wait_for_selector('#conn-state[data-state="connected"]', timeout=timeout)

    def post(self, text: str) -> None:
        count = self.page.locator("#message-list li.message").count()
        self.page.fill("#message-input", text)
        self.page.click("#send")
        self.page.wait_for_function(
            "n => document.querySelectorAll('#message-list li.message').length > n",
            arg=count,
            timeout=WAIT_MS,
        )

    def texts(self) -> list[str]:
        return list(self.page.locator("#message-list li.message .text").all_inner_texts())

    def ids(self) -> list[int]:
        return [
            int(i)
            for i in self.page.eval_on_selector_all(
                "#message-list li.message", "els => els.map(e => e.dataset.id)"
            )
        ]

    def waitForText(self, text: str, timeout: int = WAIT_MS) -> None:
        self.page.wait_for_function(
            """t => [...document.querySelectorAll('#message-list li.message .text')]
                   .some(e => e.textContent === t)""",
            arg=text,
            timeout=timeout,
        )

    def online(self) -> list[str]:
        return sorted(self.page.locator("#online li[data-user-id]").all_inner_texts())

    def waitOnline(self, count: int, timeout: int = WAIT_MS) -> None:
        self.page.wait_for_function(
            "n => document.querySelectorAll('#online li[data-user-id]').length === n",
            arg=count,
            timeout=timeout,
        )


class BrowserChatTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.browser = launchBrowser(self)
        self.dataDir = self.mktemp()
        self.server = ServerProcess(0, self.dataDir)
        self.server.start()
        self.port = self.server.port
        self.addCleanup(self.server.kill)

    def test_liveMessagesAndPresence(self) -> None:
        """
        Two people in one room: a message posted by one shows in the other within a second, both
        online lists show both, closing one tab removes it from the other; the run saves a
        screenshot of the chat.
        """
        ann = ChatPage(self.browser, self.server.url, "Ann")
        bob = ChatPage(self.browser, self.server.url, "Bob")
        ann.waitOnline(2)
        bob.waitOnline(2)
        self.assertEqual(len(ann.online()), 2)
        # Typing shows a hint on the other page (a client event on the presence channel).
        ann.page.type("#message-input", "Hel")
        bob.page.wait_for_function(
            "() => document.querySelector('#typing').textContent.includes('Ann')",
            timeout=WAIT_MS,
        )
        ann.page.fill("#message-input", "")
        ann.post("Hello Bob!")
        bob.waitForText("Hello Bob!", timeout=1000)
        bob.post("Hi Ann, how is the push service?")
        ann.waitForText("Hi Ann, how is the push service?", timeout=1000)
        ann.post("Fast. Every message arrives at once, even after a reconnect.")
        bob.waitForText("Fast. Every message arrives at once, even after a reconnect.", 1000)
        self.assertEqual(ann.texts(), bob.texts())
        ARTIFACTS.mkdir(exist_ok=True)
        ann.page.screenshot(path=str(ARTIFACTS / "chat-two-users.png"))
        # Bob opens a second tab, phone-sized: still one entry per user in both lists.
        phone = bob.context.new_page()
        phone.set_viewport_size({"width": 375, "height": 700})
        phone.goto(f"{self.server.url}/#room=general")
        phone.wait_for_selector('#conn-state[data-state="connected"]', timeout=WAIT_MS)
        phone.wait_for_function(
            "() => document.querySelectorAll('#online li[data-user-id]').length === 2",
            timeout=WAIT_MS,
        )
        phone.wait_for_function(
            "() => document.querySelectorAll('#message-list li.message').length === 3",
            timeout=WAIT_MS,
        )
        phone.screenshot(path=str(ARTIFACTS / "chat-phone.png"))
        self.assertEqual(len(ann.online()), 2)
        bob.context.close()
        ann.waitOnline(1)
        self.assertEqual(ann.errors, [])

    def test_officialClientUnderThePagesCSP(self) -> None:
        """
        The page's window has C{Pusher} from the vendored pusher-js, at the version C{tests/js}
        pins, the page has no C{pushclient.js}, and its CSP is in force: C{eval} outside
        Playwright's own evaluation is refused.
        """
        ann = ChatPage(self.browser, self.server.url, "Ann")
        self.assertEqual(ann.page.evaluate("() => typeof Pusher"), "function")
        # pusher-js names itself and its version in the WebSocket URL.
        self.assertEqual(len(ann.sockets), 1, ann.sockets)
        self.assertIn("/app/", ann.sockets[0])
        self.assertIn(f"client=js&version={PUSHER_JS_VERSION}&", ann.sockets[0])
        scripts = ann.page.eval_on_selector_all(
            "script", "els => els.map(e => e.getAttribute('src'))"
        )
        self.assertEqual(scripts, ["vendor/pusher.min.js", "app.js"])
        blocked = ann.page.evaluate(
            """() => new Promise(resolve => requestAnimationFrame(() => {
                 try { eval("1"); resolve("allowed"); } catch (e) { resolve(e.name); }
               }))"""
        )
        self.assertEqual(blocked, "EvalError")
        response = ann.page.request.get(f"{self.server.url}/pushclient.js")
        self.assertEqual(response.status, 404)
        self.assertEqual(ann.errors, [])

    def test_authorizationRetriedAfter5xx(self) -> None:
        """
        The auth endpoint answers 503 once: the page says it is retrying, asks again by itself
        and joins the room (its own entry in the online list).
        """
        context = self.browser.new_context()
        page = context.new_page()
        failed: list[str] = []

        def auth(route: Any) -> None:
            if not failed:
                failed.append(route.request.url)
                route.fulfill(
                    status=503,
                    content_type="application/json",
                    body='{"error": "The signer is down."}',
                )
            else:
                route.continue_()

        page.route("**/api/pusher/auth", auth)
        page.goto(f"{self.server.url}/#room=general")
        page.fill("#name-input", "Ann")
        page.click("#name-submit")
        page.wait_for_function(
            "() => document.querySelector('#error').textContent.includes('retrying')",
            timeout=WAIT_MS,
        )
        page.wait_for_function(
            "() => document.querySelectorAll('#online li[data-user-id]').length === 1",
            timeout=WAIT_MS,
        )
        self.assertEqual(len(failed), 1)
        self.assertTrue(page.locator("#error-bar").is_hidden())

    def test_signOut(self) -> None:
        """
        "Sign out" leaves the chat: back to the name form, the live connection closed (the other
        page's online list drops to one) and this page's stored state gone; signing in again
        shows the room's messages once each.
        """
        ann = ChatPage(self.browser, self.server.url, "Ann")
        bob = ChatPage(self.browser, self.server.url, "Bob")
        ann.waitOnline(2)
        ann.post("before signing out")
        bob.waitForText("before signing out")
        ann.page.click("#sign-out")
        ann.page.wait_for_selector("#name-view:not([hidden])", timeout=WAIT_MS)
        self.assertTrue(ann.page.locator("#chat-view").is_hidden())
        ARTIFACTS.mkdir(exist_ok=True)
        ann.page.screenshot(path=str(ARTIFACTS / "chat-signed-out.png"))
        bob.waitOnline(1)
        self.assertEqual(ann.page.evaluate("() => localStorage.getItem('pushsvc.seen')"), None)
        self.assertEqual(ann.texts(), [])
        ann.page.fill("#name-input", "Ann")
        ann.page.click("#name-submit")
        ann.waitConnected()
        ann.waitForText("before signing out")
        bob.waitOnline(2)
        self.assertEqual(ann.texts(), ["before signing out"])
        self.assertEqual(ann.errors, [])

    def test_xssShownAsText(self) -> None:
        """A message that is HTML is shown as text and runs nothing."""
        ann = ChatPage(self.browser, self.server.url, "<b>Ann</b>")
        bob = ChatPage(self.browser, self.server.url, "Bob")
        evil = "<img src=x onerror=alert(1)>"
        ann.post(evil)
        bob.waitForText(evil)
        for page in (ann, bob):
            self.assertEqual(page.page.locator("#messages img").count(), 0)
            self.assertEqual(page.page.locator("#messages b").count(), 0)
            self.assertEqual(page.dialogs, [])
        self.assertIn("<b>Ann</b>", bob.page.locator("#message-list .author").all_inner_texts())

    def test_networkCutNothingMissed(self) -> None:
        """
        One page's connection is cut while the other posts three messages: the first page
        reconnects by itself and shows all three, once each, in order.
        """
        proxy = CuttableProxy(self.port)
        proxy.start()
        self.addCleanup(proxy.close)
        ann = ChatPage(self.browser, f"http://127.0.0.1:{proxy.port}", "Ann")
        bob = ChatPage(self.browser, self.server.url, "Bob")
        bob.post("before the cut")
        ann.waitForText("before the cut")
        proxy.cut()
        ann.page.wait_for_selector('#conn-state:not([data-state="connected"])', timeout=WAIT_MS)
        for i in range(1, 4):
            bob.post(f"while away {i}")
        ann.page.wait_for_selector("#conn-detail:not([hidden])", timeout=WAIT_MS)
        self.assertEqual(ann.page.locator("#conn-retry").inner_text(), "Retry now")
        ARTIFACTS.mkdir(exist_ok=True)
        ann.page.screenshot(path=str(ARTIFACTS / "chat-reconnecting.png"))
        proxy.restore()
        ann.page.click("#conn-retry")
        ann.waitConnected(timeout=30_000)
        ann.waitForText("while away 3")
        self.assertEqual(
            ann.texts(), ["before the cut", "while away 1", "while away 2", "while away 3"]
        )
        self.assertEqual(ann.ids(), sorted(set(ann.ids())))

    def test_serverRestartNothingMissed(self) -> None:
        """
        pushsvc restarts on the same port and data dir mid-conversation: both pages reconnect by
        themselves, history is intact, and what is posted afterwards shows once, in order.
        """
        ann = ChatPage(self.browser, self.server.url, "Ann")
        bob = ChatPage(self.browser, self.server.url, "Bob")
        ann.post("before restart")
        bob.waitForText("before restart")
        self.assertEqual(self.server.stop(), -signal.SIGTERM)
        ann.page.wait_for_selector('#conn-state:not([data-state="connected"])', timeout=WAIT_MS)
        self.server.start()
        bob.waitConnected(timeout=30_000)
        for i in range(1, 4):
            bob.post(f"after restart {i}")
        ann.waitConnected(timeout=30_000)
        ann.waitForText("after restart 3")
        expected = ["before restart", "after restart 1", "after restart 2", "after restart 3"]
        self.assertEqual(ann.texts(), expected)
        self.assertEqual(bob.texts(), expected)
