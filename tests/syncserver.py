"""
Blocking helpers for tests that drive a real browser: a C{twistd -n pushsvc} child process whose
output is watched for log lines, and a TCP proxy that can cut a page's connections on demand.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading

from tests.helpers import boundPort
from tests.procs import ROOT, TWISTD


class ServerProcess:
    """
    C{twistd -n pushsvc} on C{port}, C{dataDir}; C{start()} returns once the store is ready.
    With port 0 (the default) the child binds a port of the system's choosing, read from its log
    into C{port}; a later C{start()} listens on that same port again.
    """

    def __init__(
        self, port: int, dataDir: str, *extra: str, env: dict[str, str] | None = None
    ) -> None:
        self.port = port
        self.dataDir = dataDir
        self.extra = list(extra)
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env.update(self.env)
        argv = [
            sys.executable,
            "-c",
            TWISTD,
            "-n",
            "--pidfile=",
            "pushsvc",
            "--listen",
            f"tcp:{self.port}:interface=127.0.0.1",
            "--data-dir",
            self.dataDir,
            *self.extra,
        ]
        if "--admin-listen" not in self.extra:
            argv += ["--admin-listen", "none"]  # not the default 8081 parallel runs contend for
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        self.lines = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc, self.lines), daemon=True).start()
        self.waitFor("message store ready", timeout)
        if self.port == 0:
            self.port = boundPort("".join(self.output))

    def _read(self, proc: subprocess.Popen[bytes], lines: queue.Queue[str | None]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            self.output.append(line)
            lines.put(line)
        lines.put(None)

    def waitFor(self, text: str, timeout: float = 30) -> str:
        """Block until a line containing C{text} is printed; fail on exit or timeout."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                output = "".join(self.output)
                raise AssertionError(f"no {text!r} within {timeout}s:\n{output}") from None
            if line is None:
                raise AssertionError(f"exited before {text!r}:\n" + "".join(self.output))
            if text in line:
                return line

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then wait for the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
