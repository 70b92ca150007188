"""Log lines a client can cause are bounded per period (L{pushsvc.http.logthrottle})."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from pushsvc.http.logthrottle import Throttle
from tests.helpers import logObserver


class ThrottleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []
        self.throttle = Throttle(
            Logger(observer=logObserver(self.events.append)),
            self.clock,
            "left out {count} in {period:g} s",
            burst=3,
            period=60,
        )

    def lines(self) -> list[str]:
        return [formatEvent(e) for e in self.events]

    def test_burstThenSummary(self) -> None:
        """The first 3 of a period are logged at once; the rest are counted, told at the end."""
        for n in range(10):
            self.throttle.info("event {n}", n=n)
        self.assertEqual(self.lines(), ["event 0", "event 1", "event 2"])
        self.clock.advance(60)
        self.assertEqual(self.lines()[-1], "left out 7 in 60 s")

    def test_newPeriodLogsAgain(self) -> None:
        """After a period ends the next events are logged in full again."""
        for n in range(5):
            self.throttle.info("event {n}", n=n)
        self.clock.advance(60)
        self.throttle.info("later {n}", n=1)
        self.assertEqual(self.lines()[-1], "later 1")

    def test_quietPeriodNoSummary(self) -> None:
        """A period with nothing left out ends with no summary line, and no timer is left."""
        self.throttle.info("one")
        self.clock.advance(60)
        self.assertEqual(self.lines(), ["one"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop(self) -> None:
        """stop() cancels the period's timer."""
        self.throttle.info("one")
        self.throttle.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
