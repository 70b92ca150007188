"""
L{Waiters}: the Deferreds of everyone waiting for one thing to happen (a drain, a link, a flush),
fired together when it does. Written once here instead of a list of Deferreds in every module.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from twisted.internet.defer import Deferred, succeed

T = TypeVar("T")


class Waiters(Generic[T]):
    """Deferreds waiting for an event; L{fire} fires every one of them, once, with a value."""

    __slots__ = ("_waiting",)

    def __init__(self) -> None:
        self._waiting: list[Deferred[T]] = []

    def __len__(self) -> int:
        return len(self._waiting)

    def wait(self, done: bool = False, value: T = None) -> Deferred[T]:  # type: ignore[assignment]  # None for Waiters[None]
        """
        A Deferred that fires with the value given to the next L{fire}; with C{value} at once
        when C{done} (the event has happened already).
        """
        if done:
            return succeed(value)
        d: Deferred[T] = Deferred()
        self._waiting.append(d)
        return d

    def fire(self, value: T = None) -> None:  # type: ignore[assignment]  # None for Waiters[None]
        """Fire every waiting Deferred with C{value}; those that wait later wait for the next."""
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(value)
