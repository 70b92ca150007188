"""
The keep-alive's timing wheel (L{pushsvc.ws.autobahn.Keepalive}) on a C{task.Clock}, with many
fake idle connections: pings spread (no tick sends more than its share), pongs and closes on time.
"""

from __future__ import annotations

from math import ceil

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pushsvc.frames import CLOSE_NO_PONG
from pushsvc.ws.autobahn import Keepalive

N = 10_000
PING = 30.0
PONG = 10.0


class FakeConn:
    """What the keep-alive reads and calls of a connection."""

    def __init__(self, ka: Keepalive, clock: Clock, n: int, answers: bool = True) -> None:
        self.ka = ka
        self.clock = clock
        self.socketId = f"1.{n}"
        self.lastSeen = clock.seconds()
        self.pingSentAt: float | None = None
        self.answers = answers
        self.pings: list[float] = []
        self.closedAt: float | None = None
        self.closeCode: int | None = None

    def sendPing(self) -> None:
        assert self.closedAt is None, "pinged after close"
        self.pings.append(self.clock.seconds())
        if self.answers:
            self.lastSeen = self.clock.seconds()  # the pong comes back at once

    def closeWith(self, code: int, reason: str) -> None:
        self.closedAt = self.clock.seconds()
        self.closeCode = code
        self.ka.rest(self)


class KeepaliveTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.open: list[FakeConn] = []
        self.ka = Keepalive(
            self.clock, PING, PONG, lambda: [c for c in self.open if c.closedAt is None]
        )

    def connect(self, n: int, answers: bool = True) -> list[FakeConn]:
        conns = [FakeConn(self.ka, self.clock, i, answers) for i in range(n)]
        for conn in conns:
            self.open.append(conn)
            self.ka.wake(conn)
        return conns

    def tickFor(self, seconds: float, conns: list[FakeConn]) -> list[int]:
        """Advance tick by tick; @return: the pings sent in each tick."""
        perTick = []
        before = sum(len(c.pings) for c in conns)
        for _ in range(round(seconds / self.ka.tick)):
            self.clock.advance(self.ka.tick)
            after = sum(len(c.pings) for c in conns)
            perTick.append(after - before)
            before = after
        return perTick

    def test_burstOfIdleConnectionsIsPingedSpread(self) -> None:
        """
        10,000 connections opened at once, all idle: no tick pings more than its share (the
        connections times tick / ping interval), each is pinged once, within one interval of its
        deadline, and none is closed (they answer).
        """
        conns = self.connect(N)
        share = ceil(N * self.ka.tick / PING)
        perTick = self.tickFor(2 * PING + 1, conns)
        self.assertLessEqual(max(perTick), share)
        self.assertEqual(sum(perTick[: round(PING / self.ka.tick) - 1]), 0)  # none early
        for conn in conns:
            self.assertGreaterEqual(conn.pings[0], PING - 1e-6)
            self.assertLessEqual(conn.pings[0], 2 * PING + self.ka.tick)
            if len(conn.pings) > 1:  # pinged early in the round: again an interval later
                self.assertEqual(len(conn.pings), 2)
                self.assertGreaterEqual(conn.pings[1] - conn.pings[0], PING - 1e-6)
            self.assertIsNone(conn.closedAt)

    def test_steadyStateStaysSpread(self) -> None:
        """After the first round, each is pinged again one interval after it answered."""
        conns = self.connect(N)
        self.tickFor(2 * PING + 1, conns)
        share = ceil(N * self.ka.tick / PING)
        perTick = self.tickFor(3 * PING, conns)
        self.assertLessEqual(max(perTick), share)
        for conn in conns:
            gaps = [b - a for a, b in zip(conn.pings, conn.pings[1:], strict=False)]
            self.assertTrue(gaps)
            for gap in gaps:
                self.assertAlmostEqual(gap, PING, delta=self.ka.tick + 1e-6)

    def test_noAnswerClosesOnTime(self) -> None:
        """A connection that does not answer is closed 4201 pong-timeout after its ping."""
        conns = self.connect(N, answers=False)
        self.tickFor(2 * PING + PONG + 1, conns)
        for conn in conns:
            self.assertEqual(len(conn.pings), 1)
            self.assertEqual(conn.closeCode, CLOSE_NO_PONG)
            assert conn.closedAt is not None
            self.assertAlmostEqual(conn.closedAt - conn.pings[0], PONG, delta=self.ka.tick + 1e-6)
        self.assertEqual(self.ka._slotOf, {})
        self.assertEqual(self.ka._slots, {})

    def test_lateAnswerStillCloses(self) -> None:
        """Life seen after the pong timeout is too late; life within it keeps the connection."""
        late, onTime = self.connect(2, answers=False)
        self.clock.pump([self.ka.tick] * round(PING / self.ka.tick))
        self.assertEqual((len(late.pings), len(onTime.pings)), (1, 1))
        self.clock.pump([self.ka.tick] * round((PONG - 1) / self.ka.tick))
        onTime.lastSeen = self.clock.seconds()
        self.clock.pump([self.ka.tick] * round(1.5 / self.ka.tick))
        self.assertEqual(late.closeCode, CLOSE_NO_PONG)
        self.assertIsNone(onTime.closeCode)

    def test_activeConnectionIsNeverPinged(self) -> None:
        """A connection heard from within every interval gets no ping."""
        (active,) = self.connect(1)
        for _ in range(20):
            self.clock.pump([self.ka.tick] * round(10 / self.ka.tick))
            active.lastSeen = self.clock.seconds()
        self.assertEqual(active.pings, [])

    def test_closedConnectionsAreForgotten(self) -> None:
        """A closed connection leaves the wheel at once; with none left the timer stops."""
        conns = self.connect(100)
        for conn in conns[:50]:
            conn.closedAt = self.clock.seconds()
            self.ka.rest(conn)
        self.assertEqual(len(self.ka._slotOf), 50)
        self.clock.pump([self.ka.tick] * round((PING + 1) / self.ka.tick))
        self.assertEqual([len(c.pings) for c in conns[:50]], [0] * 50)
        self.assertEqual([len(c.pings) for c in conns[50:]], [1] * 50)
        for conn in conns[50:]:
            conn.closedAt = self.clock.seconds()
            self.ka.rest(conn)
        self.assertEqual((self.ka._slotOf, self.ka._slots), ({}, {}))
        self.assertFalse(self.ka._loop.running)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_tickPingsAtMostItsBudgetWhenBehind(self) -> None:
        """A clock that jumps (a stalled reactor) still pings at most the budget per tick."""
        conns = self.connect(N)
        self.clock.advance(PING + 5)  # one tick sees every deadline passed at once
        pinged = sum(len(c.pings) for c in conns)
        self.assertLessEqual(pinged, self.ka.budget)
        self.assertGreater(pinged, 0)
