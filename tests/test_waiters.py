"""L{pushsvc.waiters.Waiters}: the Deferreds fired when something happens."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from pushsvc.waiters import Waiters


class WaitersTests(SynchronousTestCase):
    def test_fireWakesEveryWaiterOnce(self) -> None:
        """Every Deferred waiting when L{Waiters.fire} is called fires with its value, once."""
        waiters: Waiters[str] = Waiters()
        first, second = waiters.wait(), waiters.wait()
        self.assertNoResult(first)
        self.assertEqual(len(waiters), 2)
        waiters.fire("done")
        self.assertEqual(self.successResultOf(first), "done")
        self.assertEqual(self.successResultOf(second), "done")
        self.assertEqual(len(waiters), 0)
        waiters.fire("again")  # no error: nobody waits

    def test_laterWaitersWaitForTheNextFire(self) -> None:
        """A Deferred made after a fire waits for the next one."""
        waiters: Waiters[None] = Waiters()
        waiters.fire()
        later = waiters.wait()
        self.assertNoResult(later)
        waiters.fire()
        self.assertIsNone(self.successResultOf(later))

    def test_doneFiresAtOnce(self) -> None:
        """C{wait(done=True)} fires at once with the value and leaves nothing waiting."""
        waiters: Waiters[int] = Waiters()
        self.assertEqual(self.successResultOf(waiters.wait(done=True, value=3)), 3)
        self.assertEqual(len(waiters), 0)

    def test_aWaiterFiringMayWaitAgain(self) -> None:
        """A callback that waits again (during fire) waits for the next fire, not this one."""
        waiters: Waiters[None] = Waiters()
        again = []
        waiters.wait().addCallback(lambda _: again.append(waiters.wait()))
        waiters.fire()
        self.assertNoResult(again[0])
        waiters.fire()
        self.successResultOf(again[0])
