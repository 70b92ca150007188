"""
The inside view in headless Chromium (Debian's), driven by Playwright, against a real
C{twistd -n pushsvc}: the dashboard on the admin listener, a publish made with the official
Python SDK in its recent requests, that request's timeline, and the debug console. The run saves
screenshots of the dashboard, the timeline and the console under C{tests/artifacts/}.

Every wait is on something the page shows, with a timeout (see L{tests.test_browser} for why
each C{wait_for_function} is given a function).
"""

from __future__ import annotations

import pusher
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import freePort
from tests.syncserver import ServerProcess
from tests.test_browser import ARTIFACTS, WAIT_MS, ChatPage, launchBrowser

APP_ID, APP_KEY, SECRET = "4242", "inside-key", "inside-secret"
COUNT_EVENTS = """n => [...document.querySelectorAll('#console-table tbody tr')]
    .filter(tr => [...tr.cells].some(td => td.textContent === 'sdk-event')).length === n"""


class InsideViewBrowserTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.browser = launchBrowser(self)
        self.port, self.adminPort = freePort(), freePort()
        self.server = ServerProcess(
            self.port,
            self.mktemp(),
            "--app-id",
            APP_ID,
            "--app-key",
            APP_KEY,
            "--admin-listen",
            f"tcp:{self.adminPort}:interface=127.0.0.1",
            env={"PUSHSVC_APP_SECRET": SECRET},
        )
        self.server.start()
        self.addCleanup(self.server.kill)
        self.sdk = pusher.Pusher(
            app_id=APP_ID, key=APP_KEY, secret=SECRET, host="127.0.0.1", port=self.port, ssl=False
        )

    def test_dashboardTimelineAndConsole(self) -> None:
        """
        A publish through the Python SDK shows in the dashboard's recent requests; its timeline
        has a bar for the signature check, the broker publish and the fan-out (which reached the
        chat page's connection, as its hover says); the debug console shows the event live,
        holds new ones while paused, and filters by channel.
        """
        ann = ChatPage(self.browser, self.server.url, "Ann")  # one subscriber on the room
        context = self.browser.new_context(viewport={"width": 1280, "height": 1000})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"http://127.0.0.1:{self.adminPort}/")
        page.wait_for_selector('#live[data-state="live"]', timeout=WAIT_MS)
        console = context.new_page()
        console.goto(f"http://127.0.0.1:{self.adminPort}/#console")
        console.wait_for_selector('#live[data-state="live"]', timeout=WAIT_MS)

        for n in range(3):
            self.sdk.trigger("presence-room-general", "sdk-event", {"hello": "inside", "n": n})
        path = f"/apps/{APP_ID}/events"
        row = f'#requests-table tbody tr:has(td:text-is("{path}"))'
        # A refresh may have fetched while the publishes were being made: wait for all three.
        page.wait_for_function(
            "p => [...document.querySelectorAll('#requests-table td')]"
            ".filter(td => td.textContent === p).length === 3",
            arg=path,
            timeout=WAIT_MS,
        )
        page.wait_for_function(
            "() => document.querySelector('#fig-connections').textContent === '1'",
            timeout=WAIT_MS,
        )
        self.assertEqual(page.locator(row).count(), 3)
        cells = page.locator(row).first.locator("td").all_inner_texts()
        self.assertEqual(cells[2:6], ["POST", path, APP_ID, "200"])
        self.assertEqual(cells[7], "3")  # calls: signature, broker publish, fan-out
        ARTIFACTS.mkdir(exist_ok=True)
        page.wait_for_function(  # the live chart has a few seconds of history
            "() => document.querySelectorAll('#endpoints-table tbody tr:not(.empty)').length > 0",
            timeout=WAIT_MS,
        )
        page.screenshot(path=str(ARTIFACTS / "inside-dashboard.png"), full_page=True)

        page.locator(row).first.click()
        page.wait_for_selector("#timeline .tl-bar.fanout", timeout=WAIT_MS)
        kinds = page.eval_on_selector_all("#timeline .tl-bar", "bs => bs.map(b => b.dataset.kind)")
        self.assertEqual(kinds, ["request", "auth", "broker", "fanout"])
        page.hover("#timeline .tl-bar.fanout")
        page.wait_for_selector("#tip:not([hidden])", timeout=WAIT_MS)
        tip = page.inner_text("#tip")
        self.assertIn("subscribers", tip)
        self.assertIn("presence-room-general", tip)
        subscribers = page.eval_on_selector_all(
            "#tip dt",
            "dts => dts.filter(d => d.textContent === 'subscribers')"
            ".map(d => d.nextElementSibling.textContent)",
        )
        self.assertEqual(subscribers, ["1"])
        box = page.locator("#timeline-panel").bounding_box()
        assert box is not None
        clip = {**box, "height": box["height"] + 170}  # the hover's details below the panel
        page.screenshot(path=str(ARTIFACTS / "inside-timeline.png"), clip=clip)

        # The console opened before the publishes shows them, newest first.
        events = '#console-table tbody tr:has(td:text-is("sdk-event"))'
        console.wait_for_function(COUNT_EVENTS, arg=3, timeout=WAIT_MS)
        first = console.locator(events).first.locator("td").all_inner_texts()
        self.assertEqual(first[1:5], ["api message", APP_ID, "presence-room-general", "sdk-event"])
        self.assertIn('"n": 2', first[5])  # the SDK's JSON, as published
        # Paused: a new event waits; resumed: it shows.
        console.click("#console-pause")
        self.sdk.trigger("presence-room-general", "sdk-event", {"hello": "paused"})
        page.wait_for_function(
            "p => [...document.querySelectorAll('#requests-table td')]"
            ".filter(td => td.textContent === p).length === 4",
            arg=path,
            timeout=WAIT_MS,
        )
        self.assertEqual(console.locator(events).count(), 3)
        console.click("#console-pause")
        console.wait_for_function(COUNT_EVENTS, arg=4, timeout=WAIT_MS)
        console.screenshot(path=str(ARTIFACTS / "inside-console.png"))
        # A channel filter that matches nothing hides every row.
        console.fill("#console-channel", "private-nothing")
        self.assertEqual(console.locator(events).count(), 0)
        self.assertEqual(errors, [])
        self.assertEqual(ann.errors, [])
