"""Start real C{twistd pushsvc} processes for tests and wait on what they print, never sleeping."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from tests.helpers import boundPort

ROOT = Path(__file__).resolve().parent.parent
TWISTD = "from twisted.scripts.twistd import run; run()"


class TwistdProcess(ProcessProtocol):
    """
    One C{twistd -n pushsvc} child. C{waitFor(text)} fires when the output contains C{text};
    C{ended} fires with the exit code.
    """

    def __init__(self) -> None:
        self.output = b""
        self.stderr = b""
        self.ended: Deferred[int] = Deferred()
        self._waiting: list[tuple[bytes, int, Deferred[None]]] = []

    def outReceived(self, data: bytes) -> None:
        self.output += data
        self._check()

    def errReceived(self, data: bytes) -> None:
        self.stderr += data
        self.output += data
        self._check()

    def _check(self) -> None:
        for item in list(self._waiting):
            if item[0] in self.output[item[1] :]:
                self._waiting.remove(item)
                item[2].callback(None)

    def waitFor(self, text: str, timeout: float = 30, after: int = 0) -> Deferred[None]:
        """Fires once the output from byte C{after} on contains C{text}."""
        d: Deferred[None] = Deferred()
        self._waiting.append((text.encode(), after, d))
        self._check()
        d.addTimeout(timeout, reactor)
        return d

    def whenListening(self, timeout: float = 30) -> Deferred[int]:
        """Fires with the port the child bound (it was started with C{--listen tcp:0:...})."""
        return self.waitFor("(bound to ", timeout).addCallback(
            lambda _: boundPort(self.output.decode(errors="replace"))
        )

    def processEnded(self, reason: Failure) -> None:
        for _, _, d in self._waiting:
            if not d.called:
                d.errback(Exception("process ended: " + self.output.decode(errors="replace")))
        self._waiting = []
        code = 0
        if isinstance(reason.value, ProcessTerminated):
            if reason.value.exitCode is not None:
                code = reason.value.exitCode
            else:
                code = -(reason.value.signal or 1)
        elif not reason.check(ProcessDone):
            code = -1
        self.ended.callback(code)

    def signal(self, name: str = "TERM") -> Deferred[int]:
        if self.transport is not None and self.transport.pid is not None:
            self.transport.signalProcess(name)
        d = self.ended
        return d


def startTwistd(
    args: list[str],
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    python: str = sys.executable,
    usePythonPath: bool = True,
    setup: str = "",
    twistdArgs: tuple[str, ...] = ("-n", "--pidfile="),
) -> TwistdProcess:
    """
    Spawn C{python -c twistd TWISTDARGS pushsvc ARGS} with the source tree importable; by
    default C{-n --pidfile=} (give e.g. C{--pidfile=p --logfile=l} for daemon mode).
    C{setup} is Python run first in the child (e.g. lowering a resource limit).
    """
    proto = TwistdProcess()
    childEnv = dict(os.environ)
    if usePythonPath:
        childEnv["PYTHONPATH"] = str(ROOT) + os.pathsep + childEnv.get("PYTHONPATH", "")
    childEnv.update(env or {})
    if "--admin-listen" not in args:
        # Not the default loopback:8081, which parallel test runs would contend for.
        args = [*args, "--admin-listen", "none"]
    argv = [python, "-c", f"{setup}\n{TWISTD}", *twistdArgs, "pushsvc", *args]
    reactor.spawnProcess(proto, python, argv, env=childEnv, path=cwd)
    return proto


def killIfRunning(proto: TwistdProcess) -> Deferred[Any] | None:
    """Cleanup helper: SIGKILL a child this test started that is still running."""
    if proto.ended.called:
        return None
    try:
        proto.transport.signalProcess(signal.SIGKILL)  # type: ignore[union-attr]  # connected: transport is set
    except Exception:
        return None
    return proto.ended
