"""
Blocking helpers for tests that drive a real browser: a C{twistd -n pushsvc} child process whose
output is watched for log lines, and a TCP proxy that can cut a page's connections on demand.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TWISTD = "from twisted.scripts.twistd import run; run()"


class ServerProcess:
    """C{twistd -n pushsvc} on C{port}, C{dataDir}; C{start()} returns once the store is ready."""

    def __init__(self, port: int, dataDir: str, *extra: str, env: dict[str, str] | None = None):
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


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CuttableProxy:
    """
    A loopback TCP proxy to C{targetPort}. C{cut()} drops every connection and refuses new ones
    (connections are reset) until C{restore()}: the network of one page going away and back.
    """

    def __init__(self, targetPort: int) -> None:
        self.targetPort = targetPort
        self.port = freePort()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._open = False
        self._listener: socket.socket | None = None

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        self._open = True
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                if not self._open:
                    client.close()
                    continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.targetPort), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            with self._lock:
                self._sockets.discard(source)
                self._sockets.discard(sink)

    def cut(self) -> None:
        with self._lock:
            self._open = False
            sockets = list(self._sockets)
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def restore(self) -> None:
        with self._lock:
            self._open = True

    def close(self) -> None:
        self.cut()
        if self._listener is not None:
            self._listener.close()
