"""
End-to-end (issue 16): the chat's history, identity, outbox, live rooms and edits in headless
Chromium (Debian's) against a real C{twistd -n pushsvc}; the helpers are those of
L{tests.test_browser}. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.syncserver import CuttableProxy, ServerProcess, freePort
from tests.test_browser import ARTIFACTS, WAIT_MS, ChatPage, launchBrowser

LIVE_MS = 1000  # "within a second"


def mineTexts(chat: ChatPage) -> list[str]:
    return list(chat.page.locator("#message-list li.message.mine .text").all_inner_texts())


class BrowserChatCompleteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.browser = launchBrowser(self)
        self.port = freePort()
        self.dataDir = self.mktemp()
        self.server = ServerProcess(self.port, self.dataDir)
        self.server.start()
        self.addCleanup(self.server.kill)

    def seed(self, room: str, count: int) -> None:
        """Fill C{room} with C{count} messages, written to the stopped server's SQLite file."""
        self.server.stop()
        db = sqlite3.connect(Path(self.dataDir) / "pushsvc.sqlite3")
        with db:
            db.execute(
                "INSERT INTO rooms (name, last_id, last_at) VALUES (?, ?, ?)", (room, count, 1e9)
            )
            db.executemany(
                "INSERT INTO messages (room, id, author, text, created_at, user_id)"
                " VALUES (?, ?, 'Old', ?, ?, 'feedbeef00000000')",
                [(room, i, f"old {i}", 1e9 - 3600 * 30 + i * 60) for i in range(1, count + 1)],
            )
        db.close()
        self.server.start()

    def test_scrollBackToTheFirstMessage(self) -> None:
        """
        A room of 300 messages opens on the newest 50; scrolling up loads older pages until
        "beginning of #history" shows, with every message 1..300 shown once, in order.
        """
        self.seed("history", 300)
        ann = ChatPage(self.browser, self.server.url, "Ann", room="history")
        ann.page.wait_for_function(
            "() => document.querySelectorAll('#message-list li.message').length >= 50",
            timeout=WAIT_MS,
        )
        self.assertEqual(ann.ids(), list(range(251, 301)))
        for _ in range(20):
            if ann.page.locator("#beginning").is_visible():
                break
            count = len(ann.ids())
            ann.page.eval_on_selector("#messages", "m => { m.scrollTop = 0; }")
            ann.page.wait_for_function(
                """n => document.querySelectorAll('#message-list li.message').length > n
                       || !document.querySelector('#beginning').hidden""",
                arg=count,
                timeout=WAIT_MS,
            )
        self.assertTrue(ann.page.locator("#beginning").is_visible())
        self.assertIn("beginning of #history", ann.page.locator("#beginning").inner_text())
        self.assertEqual(ann.ids(), list(range(1, 301)))
        self.assertEqual(ann.texts(), [f"old {i}" for i in range(1, 301)])
        self.assertEqual(ann.errors, [])

    def test_twoAnns(self) -> None:
        """
        Two people named Ann are two people: two entries in the online list with different
        tags, each sees only her own message as hers, marked "(you)".
        """
        first = ChatPage(self.browser, self.server.url, "Ann")
        second = ChatPage(self.browser, self.server.url, "Ann")
        first.waitOnline(2)
        second.waitOnline(2)
        first.post("from the first Ann")
        second.waitForText("from the first Ann")
        second.post("from the second Ann")
        first.waitForText("from the second Ann")
        self.assertEqual(mineTexts(first), ["from the first Ann"])
        self.assertEqual(mineTexts(second), ["from the second Ann"])
        for chat in (first, second):
            tags = chat.page.locator("#online .disc").all_inner_texts()
            self.assertEqual(len(set(tags)), 2, tags)
            self.assertEqual(chat.page.locator("#online .you").count(), 1)
            self.assertEqual(chat.page.locator("#message-list .you").count(), 1)
        firstId = first.page.evaluate("() => fetch('/api/session').then(r => r.json())")
        secondId = second.page.evaluate("() => fetch('/api/session').then(r => r.json())")
        self.assertNotEqual(firstId["user_id"], secondId["user_id"])

    def test_typedWhileServerDownSentOnceAfterRestart(self) -> None:
        """
        A message typed while pushsvc is stopped waits as "not sent, retrying"; after the
        restart it is sent by itself, stored and shown once on both pages, and the error bar
        goes away.
        """
        ann = ChatPage(self.browser, self.server.url, "Ann")
        bob = ChatPage(self.browser, self.server.url, "Bob")
        ann.post("before the stop")
        bob.waitForText("before the stop")
        self.server.stop()
        ann.page.wait_for_selector('#conn-state:not([data-state="connected"])', timeout=WAIT_MS)
        ann.page.fill("#message-input", "typed while the server was away")
        ann.page.press("#message-input", "Enter")
        ann.page.wait_for_function(
            """() => [...document.querySelectorAll('#outbox-list [data-testid=outbox-status]')]
                   .some(e => e.textContent === 'not sent, retrying')""",
            timeout=WAIT_MS,
        )
        self.assertTrue(ann.page.locator("#error-bar").is_visible())
        stored = ann.page.evaluate("() => localStorage.getItem('pushsvc.outbox')")
        self.assertIn("typed while the server was away", stored)
        ARTIFACTS.mkdir(exist_ok=True)
        ann.page.screenshot(path=str(ARTIFACTS / "chat-outbox-waiting.png"))
        self.server.start()
        ann.waitForText("typed while the server was away", timeout=30_000)
        bob.waitForText("typed while the server was away", timeout=30_000)
        ann.page.wait_for_selector("#error-bar", state="hidden", timeout=WAIT_MS)
        self.assertEqual(ann.page.locator("#outbox-list li").count(), 0)
        expected = ["before the stop", "typed while the server was away"]
        self.assertEqual(ann.texts(), expected)
        self.assertEqual(bob.texts(), expected)
        reply = ann.page.evaluate("() => fetch('/api/rooms/general/messages').then(r => r.json())")
        self.assertEqual([m["text"] for m in reply["messages"]], expected)

    def test_sameClientIdStoredOnce(self) -> None:
        """Against the real server (SQLite): the same client id POSTed twice, then five times
        at once, is one stored message; the retries are answered 200 with it."""
        ann = ChatPage(self.browser, self.server.url, "Ann")
        codes = ann.page.evaluate(
            """async () => {
                 const post = () => fetch('/api/rooms/once/messages', {
                   method: 'POST', headers: {'Content-Type': 'application/json'},
                   body: JSON.stringify({text: 'only once', client_id: 'same-id-1'}),
                 }).then(async r => [r.status, (await r.json()).id]);
                 const first = [await post(), await post()];
                 return first.concat(await Promise.all([1, 2, 3, 4, 5].map(post)));
               }"""
        )
        self.assertEqual(codes, [[201, 1]] + [[200, 1]] * 6)
        reply = ann.page.evaluate("() => fetch('/api/rooms/once/messages').then(r => r.json())")
        self.assertEqual([m["text"] for m in reply["messages"]], ["only once"])

    def test_outboxKeptAcrossReload(self) -> None:
        """A message whose POST fails waits in the outbox; the page is reloaded; the reloaded
        page sends it by itself, and it is stored once."""
        ann = ChatPage(self.browser, self.server.url, "Ann")
        ann.page.route("**/api/rooms/general/messages", lambda route: route.abort())
        ann.page.fill("#message-input", "survives a reload")
        ann.page.press("#message-input", "Enter")
        ann.page.wait_for_function(
            """() => [...document.querySelectorAll('#outbox-list [data-testid=outbox-status]')]
                   .some(e => e.textContent === 'not sent, retrying')""",
            timeout=WAIT_MS,
        )
        ann.page.unroute("**/api/rooms/general/messages")
        ann.page.reload()
        ann.waitConnected()
        ann.waitForText("survives a reload")
        ann.page.wait_for_selector("#outbox-list li", state="detached", timeout=WAIT_MS)
        self.assertEqual(ann.texts(), ["survives a reload"])
        self.assertEqual(ann.page.evaluate("() => localStorage.getItem('pushsvc.outbox')"), "[]")

    def test_newRoomAndUnreadLive(self) -> None:
        """A room created in one page is listed in the other within a second; a message there
        shows as one unread in the other page within a second."""
        ann = ChatPage(self.browser, self.server.url, "Ann")
        bob = ChatPage(self.browser, self.server.url, "Bob")
        ann.page.fill("#room-input", "fresh-room")
        ann.page.click("#room-join")
        bob.page.wait_for_selector('#rooms li[data-room="fresh-room"]', timeout=LIVE_MS)
        ann.waitConnected()
        ann.page.wait_for_function(
            "() => document.querySelector('#room-name').textContent === 'fresh-room'",
            timeout=WAIT_MS,
        )
        ann.post("first in the fresh room")
        bob.page.wait_for_selector(
            '#rooms li[data-room="fresh-room"] [data-testid="unread"]', timeout=LIVE_MS
        )
        self.assertEqual(
            bob.page.locator(
                '#rooms li[data-room="fresh-room"] [data-testid="unread"]'
            ).inner_text(),
            "1",
        )
        self.assertEqual(ann.errors + bob.errors, [])

    def test_editAndDeleteLive(self) -> None:
        """
        Ann edits her message and then deletes it: Bob's page shows each within a second, and
        a page opened afterwards shows "message deleted". Bob has no Edit on Ann's message.
        """
        ann = ChatPage(self.browser, self.server.url, "Ann")
        bob = ChatPage(self.browser, self.server.url, "Bob")
        ann.post("this has a tpyo")
        bob.waitForText("this has a tpyo")
        self.assertEqual(bob.page.locator("#message-list .action").count(), 0)
        mine = ann.page.locator("#message-list li.message.mine").last
        mine.hover()
        mine.locator(".action.edit").click()
        self.assertEqual(ann.page.input_value("#message-input"), "this has a tpyo")
        ann.page.fill("#message-input", "this has no typo")
        ann.page.press("#message-input", "Enter")
        bob.waitForText("this has no typo (edited)", timeout=LIVE_MS)
        ann.waitForText("this has no typo (edited)")
        mine = ann.page.locator("#message-list li.message.mine").last
        mine.hover()
        mine.locator(".action.delete").click()
        mine.locator(".action.delete").click()
        bob.waitForText("message deleted", timeout=LIVE_MS)
        self.assertEqual(bob.texts(), ["message deleted"])
        later = ChatPage(self.browser, self.server.url, "Cy")
        later.waitForText("message deleted")
        self.assertEqual(later.texts(), ["message deleted"])

    def test_editWhileAwayShownAfterReconnect(self) -> None:
        """Bob's connection is cut while Ann edits one message and deletes another: when Bob's
        page reconnects it shows the current text of both, without a reload."""
        proxy = CuttableProxy(self.port)
        proxy.start()
        self.addCleanup(proxy.close)
        ann = ChatPage(self.browser, self.server.url, "Ann")
        bob = ChatPage(self.browser, f"http://127.0.0.1:{proxy.port}", "Bob")
        ann.post("to be edited")
        ann.post("to be deleted")
        bob.waitForText("to be deleted")
        proxy.cut()
        bob.page.wait_for_selector('#conn-state:not([data-state="connected"])', timeout=WAIT_MS)
        for path, method, body in [
            ("/api/rooms/general/messages/1", "PATCH", '{"text": "edited while Bob was away"}'),
            ("/api/rooms/general/messages/2", "DELETE", None),
        ]:
            status = ann.page.evaluate(
                """([path, method, body]) => fetch(path, {method, body,
                     headers: body ? {'Content-Type': 'application/json'} : {}})
                   .then(r => r.status)""",
                [path, method, body],
            )
            self.assertEqual(status, 200)
        proxy.restore()
        bob.page.click("#conn-retry")
        bob.waitConnected(timeout=30_000)
        bob.waitForText("edited while Bob was away (edited)")
        bob.waitForText("message deleted")
        self.assertEqual(bob.texts(), ["edited while Bob was away (edited)", "message deleted"])

    def test_firstVisitNoConsoleErrors(self) -> None:
        """A first visit (no session) logs no console error: GET /api/session is a 200."""
        context = self.browser.new_context()
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        statuses: list[Any] = []
        page.on(
            "response",
            lambda r: statuses.append(r.status) if r.url.endswith("/api/session") else None,
        )
        page.goto(f"{self.server.url}/")
        page.wait_for_selector("#name-view:not([hidden])", timeout=WAIT_MS)
        self.assertEqual(statuses, [200])
        self.assertEqual(errors, [])

    def test_screenshots(self) -> None:
        """
        Desktop and phone screenshots of a short conversation: messages sit above the
        composer, a dated day separator, own grouped messages as one block.
        """
        ann = ChatPage(self.browser, self.server.url, "Ann")
        bob = ChatPage(self.browser, self.server.url, "Bob")
        bob.post("Morning! Is the new history paging in?")
        ann.post("It is: scroll up and it loads older pages.")
        ann.post("And messages typed offline are sent by themselves.")
        ann.post("Edits and deletes show live too.")
        bob.waitForText("Edits and deletes show live too.")
        ARTIFACTS.mkdir(exist_ok=True)
        ann.page.screenshot(path=str(ARTIFACTS / "chat16-desktop.png"))
        # Ann's phone: a second tab of the same user, phone-sized.
        phone = ann.context.new_page()
        phone.set_viewport_size({"width": 375, "height": 700})
        phone.goto(f"{self.server.url}/#room=general")
        phone.wait_for_selector('#conn-state[data-state="connected"]', timeout=WAIT_MS)
        phone.wait_for_function(
            "() => document.querySelectorAll('#message-list li.message').length === 4",
            timeout=WAIT_MS,
        )
        phone.screenshot(path=str(ARTIFACTS / "chat16-phone.png"))
        self.assertEqual(phone.locator("#message-list li.message.mine").count(), 3)
        day = ann.page.eval_on_selector(
            "#message-list li.message.new-day", "e => getComputedStyle(e, '::before').content"
        )
        self.assertIn("Today", day)
        gap = ann.page.evaluate(
            """() => {
                 const list = document.querySelector('#messages');
                 const last = document.querySelector('#message-list li.message:last-child');
                 return list.getBoundingClientRect().bottom - last.getBoundingClientRect().bottom;
               }"""
        )
        self.assertLess(gap, 60)
