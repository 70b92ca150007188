"""
Log lines that a client can cause, bounded: at most a few of each kind per period, then one
summary line with the count of the rest.

A hostile client can set off some log lines at will (a request whose headers never finish, a
client that never reads its replies). One line each is what an operator wants to see while they
are rare; under a flood of them the log would grow as fast as the attacker connects. So each kind
logs its first L{Throttle.burst} events of a period in full, counts the others, and when the
period ends says how many were left out.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

DEFAULT_BURST = 10
DEFAULT_PERIOD = 60.0


class Throttle:
    """
    Info lines of one kind, at most C{burst} per C{period} seconds on C{clock}; the rest are
    counted and summed up in one line (C{summary}, formatted with C{count} and C{period}) when
    the period ends.
    """

    def __init__(
        self,
        log: Logger,
        clock: IReactorTime,
        summary: str,
        burst: int = DEFAULT_BURST,
        period: float = DEFAULT_PERIOD,
    ) -> None:
        self.log = log
        self.clock = clock
        self.summary = summary
        self.burst = burst
        self.period = period
        self._logged = 0
        self._left = 0
        self._window: IDelayedCall | None = None

    def info(self, format: str, **fields: Any) -> None:
        """Log C{format} with C{fields} at info, unless this period has had its share."""
        self._emit(self.log.info, format, fields)

    def warn(self, format: str, **fields: Any) -> None:
        """Log C{format} with C{fields} as a warning, unless this period has had its share."""
        self._emit(self.log.warn, format, fields)

    def _emit(self, emit: Any, format: str, fields: dict[str, Any]) -> None:
        if self._window is None:
            self._window = self.clock.callLater(self.period, self._endPeriod)
        if self._logged < self.burst:
            self._logged += 1
            emit(format, **fields)
        else:
            self._left += 1

    def _endPeriod(self) -> None:
        self._window = None
        left, self._logged, self._left = self._left, 0, 0
        if left:
            self.log.info(self.summary, count=left, period=self.period)

    def stop(self) -> None:
        """Forget the period in progress (its summary is not logged)."""
        if self._window is not None and self._window.active():
            self._window.cancel()
        self._window = None
