"""Token buckets per key, on a task.Clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pushsvc.ratelimit import RateLimiter


class RateLimiterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.limiter = RateLimiter(1.0, 20, self.clock.seconds)

    def test_burstThenRate(self) -> None:
        """20 at once, then one a second; a refusal says how long to wait and spends nothing."""
        self.assertEqual([self.limiter.take("a") for _ in range(20)], [0.0] * 20)
        self.assertAlmostEqual(self.limiter.take("a"), 1.0)
        self.clock.advance(0.25)
        self.assertAlmostEqual(self.limiter.take("a"), 0.75)
        self.assertAlmostEqual(self.limiter.take("a"), 0.75)
        self.clock.advance(0.75)
        self.assertEqual(self.limiter.take("a"), 0.0)
        self.assertAlmostEqual(self.limiter.take("a"), 1.0)

    def test_keysApart(self) -> None:
        """One key's spending leaves another's bucket full."""
        for _ in range(25):
            self.limiter.take("a")
        self.assertEqual([self.limiter.take("b") for _ in range(20)], [0.0] * 20)

    def test_refillCapped(self) -> None:
        """A long pause saves up no more than the burst."""
        self.limiter.take("a")
        self.clock.advance(3600)
        self.assertEqual([self.limiter.take("a") for _ in range(20)], [0.0] * 20)
        self.assertGreater(self.limiter.take("a"), 0)

    def test_memoryBounded(self) -> None:
        """Buckets full again are forgotten as time passes, and never more than maxKeys stay."""
        for i in range(1000):
            self.limiter.take(i)
        self.assertEqual(len(self.limiter), 1000)
        self.clock.advance(20)
        self.limiter.take("new")
        self.assertEqual(len(self.limiter), 1)
        capped = RateLimiter(1.0, 20, self.clock.seconds, maxKeys=100)
        for i in range(1000):
            capped.take(i)
        self.assertEqual(len(capped), 100)
        capped.forget(999)
        self.assertEqual(len(capped), 99)

    def test_badSettings(self) -> None:
        self.assertRaises(ValueError, RateLimiter, 0, 20, self.clock.seconds)
        self.assertRaises(ValueError, RateLimiter, 1.0, 0, self.clock.seconds)
