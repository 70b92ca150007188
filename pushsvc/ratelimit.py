"""
Token buckets per key (a chat session, say), on a clock that tests replace with C{task.Clock}.

Each key may spend C{burst} tokens at once and earns C{rate} tokens a second back, up to
C{burst}. Only keys used within the last C{burst / rate} seconds are remembered (an older bucket
is full again, which is what a forgotten key gets), so memory follows the recent request rate,
and never exceeds C{maxKeys} buckets. Every call is O(1) amortised.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable


class RateLimiter:
    """Token buckets per key: C{rate} tokens a second, at most C{burst} saved up."""

    def __init__(
        self, rate: float, burst: int, now: Callable[[], float], maxKeys: int = 100_000
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a rate limit needs a positive rate and a burst of at least 1")
        self.rate = rate
        self.burst = burst
        self._now = now
        self._maxKeys = maxKeys
        # key -> (tokens left, when counted); least recently used first.
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Hashable) -> float:
        """
        Spend one of C{key}'s tokens. Returns 0.0 when there was one, else the seconds until
        there will be (nothing is spent then).
        """
        now = self._now()
        entry = self._buckets.pop(key, None)
        tokens = float(self.burst) if entry is None else self._refilled(entry, now)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        self._forgetFull(now)
        return wait

    def forget(self, key: Hashable) -> None:
        """Drop C{key}'s bucket (its session is gone)."""
        self._buckets.pop(key, None)

    def _refilled(self, entry: tuple[float, float], now: float) -> float:
        tokens, at = entry
        return min(float(self.burst), tokens + max(now - at, 0.0) * self.rate)

    def _forgetFull(self, now: float) -> None:
        buckets = self._buckets
        while buckets:
            key, entry = next(iter(buckets.items()))
            if len(buckets) <= self._maxKeys and self._refilled(entry, now) < self.burst:
                return
            del buckets[key]
