"""
The abuse probes of issue 11: what one hostile client can do to pushsvc, measured.

    python bench/abuse.py            # every probe, under four minutes
    python bench/abuse.py --quick    # shorter floods and fewer cycles, about two minutes

It starts its own servers (real ``twistd -n pushsvc`` children with this checkout on
PYTHONPATH, ``--app-id/--app-key``, ``PUSHSVC_APP_SECRET``, data dirs in a temporary directory)
and two private ``redis-server``s on spare loopback ports (one of them with a password), runs
every probe against them and prints a markdown table: probe, result (measured), expected, ok.
It exits 0 when every row is ok, 1 otherwise. Everything goes over 127.0.0.x; every loop is
bounded in count and time; it ends the processes it started, by PID, also on Ctrl-C. The
machine's own Redis is never touched.

Servers: ``main`` (defaults), ``caps-ip`` (``--max-connections-per-ip 50``), ``caps-proc``
(``--max-connections 50``), ``fds`` (RLIMIT_NOFILE 256), ``redis-1``/``redis-2`` (``--redis`` on
the private Redis) and ``bad-password`` (``--redis`` with a wrong password). A server that does
not start (an option it does not know yet, say) turns its probes' rows into errors; a probe that
crashes prints its error in its row; the run goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextvars
import hashlib
import hmac
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

APP_ID, APP_KEY = "abuse", "abusekey"
# A fresh secret per run, so that finding it in a log or a reply means something.
APP_SECRET = "abuse-secret-" + secrets.token_hex(12)
MIB = 1024 * 1024


# -- measuring a process -----------------------------------------------------------------------
# (the same /proc readings as bench/run.py's cpuSeconds and rssKiB)

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpuSeconds(pid: int) -> float:
    """utime + stime of process C{pid}, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rssMiB(pid: int) -> float:
    """The resident set of process C{pid} (VmRSS), in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def openFds(pid: int) -> int:
    """How many file descriptors process C{pid} has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- signing ---------------------------------------------------------------------------------


def hmacHex(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def apiSignature(secret: str, method: str, path: str, params: dict[str, str]) -> str:
    """
    The HTTP API's C{auth_signature}: HMAC-SHA256 of C{METHOD\\nPATH\\nQUERY}, QUERY being every
    parameter but C{auth_signature}, keys lower-cased, sorted, C{k=v} joined by C{&}, unescaped.
    """
    query = "&".join(
        f"{k}={v}"
        for k, v in sorted(
            (k.lower(), v) for k, v in params.items() if k.lower() != "auth_signature"
        )
    )
    return hmacHex(secret, f"{method}\n{path}\n{query}".encode())


def signedParams(
    method: str, path: str, body: bytes, now: float | None = None, secret: str = APP_SECRET
) -> dict[str, str]:
    params = {
        "auth_key": APP_KEY,
        "auth_timestamp": str(int(now or time.time())),
        "auth_version": "1.0",
    }
    if body:
        params["body_md5"] = hashlib.md5(body, usedforsecurity=False).hexdigest()
    params["auth_signature"] = apiSignature(secret, method, path, params)
    return params


def notifySignature(secret: str, timestamp: str, channel: str, body: bytes) -> str:
    """C{/notify}'s signature: hex HMAC-SHA256(secret, timestamp + "." + channel + "." + body)."""
    return hmacHex(secret, f"{timestamp}.{channel}.".encode() + body)


def legacyNotifySignature(secret: str, timestamp: str, body: bytes) -> str:
    """The signature before issue 11 (timestamp and body only): used when a server wants it."""
    return hmacHex(secret, timestamp.encode() + b"." + body)


def channelAuth(socketId: str, channel: str) -> str:
    return f"{APP_KEY}:{hmacHex(APP_SECRET, f'{socketId}:{channel}'.encode())}"


# -- connections this probe opened (closed when it ends, whatever happens) -----------------------

_opened: contextvars.ContextVar[list[asyncio.StreamWriter]] = contextvars.ContextVar("opened")


def _track(writer: asyncio.StreamWriter) -> None:
    try:
        _opened.get().append(writer)
    except LookupError:
        pass


def abort(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    if not transport.is_closing():
        transport.abort()


async def openConn(
    port: int, src: str | None = None, rcvbuf: int | None = None, timeout: float = 5
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to 127.0.0.1:C{port}, from C{src} (127.0.0.x) with a C{rcvbuf}."""
    sock = socket.socket()
    sock.setblocking(False)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if src is not None:
        sock.bind((src, 0))
    try:
        await asyncio.wait_for(
            asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)), timeout
        )
        reader, writer = await asyncio.open_connection(sock=sock)
    except BaseException:
        sock.close()
        raise
    _track(writer)
    return reader, writer


# -- HTTP ------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def isJSONError(self) -> bool:
        obj = self.json()
        return isinstance(obj, dict) and isinstance(obj.get("error"), str)

    def short(self) -> str:
        return f"{self.status}" + ("" if self.status < 400 or self.isJSONError else " (no JSON)")


# What a request can fail with when the server refuses, drops or ignores it.
NET_ERRORS = (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError)
ERROR_BODIES: list[bytes] = []  # every 4xx/5xx body seen, searched for secrets at the end


async def readReply(reader: asyncio.StreamReader) -> Reply:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            body += await reader.readexactly(size + 2)
            if size == 0:
                break
            body = body[:-2]
    else:
        body = await reader.read()
    if status >= 400:
        ERROR_BODIES.append(body)
    return Reply(status, headers, body)


def requestBytes(
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    close: bool = True,
) -> bytes:
    out = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    for k, v in (headers or {}).items():
        out += f"{k}: {v}\r\n"
    if body or method in ("POST", "PUT", "DELETE"):
        out += f"Content-Length: {len(body)}\r\n"
    if close:
        out += "Connection: close\r\n"
    return (out + "\r\n").encode("latin-1") + body


async def http(
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    timeout: float = 10,
    src: str | None = None,
) -> Reply:
    """One request on a fresh connection; fires with the L{Reply}."""
    reader, writer = await openConn(port, src=src, timeout=timeout)
    try:
        writer.write(requestBytes(method, path, body, headers))
        return await asyncio.wait_for(readReply(reader), timeout)
    finally:
        abort(writer)


def jsonHeaders(cookie: str | None = None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if cookie:
        headers["Cookie"] = cookie
    return headers


async def publish(
    port: int, channel: str, event: str, data: str, timeout: float = 5, extraQuery: str = ""
) -> Reply:
    """A signed C{POST /apps/{id}/events}; C{extraQuery} is appended after signing."""
    path = f"/apps/{APP_ID}/events"
    body = json.dumps({"name": event, "channel": channel, "data": data}).encode()
    query = urlencode(signedParams("POST", path, body)) + extraQuery
    return await http(port, "POST", f"{path}?{query}", body, jsonHeaders(), timeout)


async def session(port: int, name: str = "abuser") -> str:
    """Sign in to the chat; fires with the C{Cookie} header value."""
    reply = await http(
        port, "POST", "/api/session", json.dumps({"name": name}).encode(), jsonHeaders()
    )
    if reply.status != 200:
        raise RuntimeError(f"POST /api/session answered {reply.status}")
    return reply.headers["set-cookie"].split(";", 1)[0]


# -- WebSocket -------------------------------------------------------------------------------


class WSClosed(Exception):
    def __init__(self, code: int | None, how: str = "") -> None:
        super().__init__(f"closed {code} {how}".strip())
        self.code = code


class Refused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"handshake answered HTTP {status}")
        self.status = status


WS_PATH = f"/app/{APP_KEY}?protocol=7&client=abuse&version=1"


class WS:
    """A small WebSocket client: sends masked frames, reads frames, answers pings."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.socketId = ""

    @classmethod
    async def open(
        cls,
        port: int,
        src: str | None = None,
        rcvbuf: int | None = None,
        established: bool = True,
        timeout: float = 5,
    ) -> WS:
        """
        Fires with a client whose handshake is done (and C{connection_established} read);
        fails with L{Refused} (HTTP status) or L{WSClosed} (close code).
        """
        reader, writer = await openConn(port, src, rcvbuf, timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            requestBytes(
                "GET",
                WS_PATH,
                headers={
                    "Upgrade": "websocket",
                    "Connection": "Upgrade",
                    "Sec-WebSocket-Key": key,
                    "Sec-WebSocket-Version": "13",
                },
                close=False,
            )
        )
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        except asyncio.IncompleteReadError:
            abort(writer)
            raise WSClosed(None, "before the handshake") from None
        status = int(head.split()[1])
        if status != 101:
            abort(writer)
            raise Refused(status)
        ws = cls(reader, writer)
        if established:
            event = await ws.event(timeout)
            if event.get("event") != "pusher:connection_established":
                raise RuntimeError(f"first event was {event!r}")
            ws.socketId = json.loads(event["data"])["socket_id"]
        return ws

    def send(self, payload: bytes, opcode: int = 1) -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(head + mask + masked)

    def sendJSON(self, obj: Any) -> None:
        self.send(json.dumps(obj).encode())

    async def frame(self, timeout: float) -> tuple[int, bytes]:
        """The next data frame (opcode, payload); pings answered; a close raises L{WSClosed}."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = max(0.0, deadline - loop.time())
            try:
                b1, b2 = await asyncio.wait_for(self.reader.readexactly(2), left)
                n = b2 & 0x7F
                if n == 126:
                    n = struct.unpack("!H", await self.reader.readexactly(2))[0]
                elif n == 127:
                    n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
                payload = await asyncio.wait_for(self.reader.readexactly(n), max(left, 5))
            except (asyncio.IncompleteReadError, ConnectionError):
                raise WSClosed(None, "without a close frame") from None
            opcode = b1 & 0x0F
            if opcode == 8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                abort(self.writer)
                raise WSClosed(code)
            if opcode == 9:
                self.send(payload, 10)
                continue
            if opcode in (1, 2):
                return opcode, payload

    async def event(self, timeout: float = 5, name: str | None = None) -> dict[str, Any]:
        """The next Pusher event (named C{name}, skipping others)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            _, payload = await self.frame(max(0.0, deadline - loop.time()))
            event = json.loads(payload)
            if name is None or event.get("event") == name:
                return event  # type: ignore[no-any-return]

    async def subscribe(self, channel: str) -> None:
        data = {"channel": channel}
        if channel.startswith("private-"):
            data["auth"] = channelAuth(self.socketId, channel)
        self.sendJSON({"event": "pusher:subscribe", "data": data})
        await self.event(5, "pusher_internal:subscription_succeeded")

    async def closedWith(self, timeout: float) -> int | None | str:
        """The close code if the server closes within C{timeout}, else C{"open"}."""
        try:
            while True:
                await self.frame(timeout)
        except WSClosed as e:
            return e.code
        except TimeoutError:
            return "open"

    def close(self) -> None:
        abort(self.writer)


# -- processes -------------------------------------------------------------------------------

STARTED: list[subprocess.Popen[bytes]] = []  # everything this script started, ended by PID


def stopAll() -> None:
    for proc in STARTED:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in STARTED:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def spawn(
    argv: list[str], logPath: Path, env: dict[str, str] | None = None, nofile: int | None = None
) -> subprocess.Popen[bytes]:
    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with open(logPath, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            stdin=subprocess.DEVNULL,
            preexec_fn=limit,
        )
    STARTED.append(proc)
    return proc


class NodeFailed(Exception):
    pass


def twistd() -> list[str]:
    """The twistd of this Python (as bench/run.py runs it)."""
    script = Path(sys.executable).parent / "twistd"
    if script.is_file():
        return [sys.executable, str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


@dataclass
class Node:
    """One C{twistd -n pushsvc}: its port, data dir and log (twistd's log and its output)."""

    name: str
    port: int
    dataDir: Path
    logPath: Path
    proc: subprocess.Popen[bytes]
    error: str = ""

    @property
    def pid(self) -> int:
        if self.error:
            raise NodeFailed(f"server {self.name} did not start: {self.error}")
        return self.proc.pid

    def log(self) -> str:
        return self.logPath.read_text(errors="replace") if self.logPath.exists() else ""

    def logSize(self) -> int:
        return self.logPath.stat().st_size if self.logPath.exists() else 0

    def logSince(self, offset: int) -> list[str]:
        with open(self.logPath, "rb") as f:
            f.seek(offset)
            return [line for line in f.read().decode(errors="replace").splitlines() if line.strip()]


def startNode(work: Path, name: str, extra: list[str], nofile: int | None = None) -> Node:
    port = freePort()
    dataDir = work / f"data-{name}"  # created by the server: its mode is the server's doing
    logPath = work / f"{name}.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(":")
    env["PUSHSVC_APP_SECRET"] = APP_SECRET
    env.pop("PUSHSVC_SESSION_KEY", None)
    argv = [
        *twistd(),
        "-n",
        "--pidfile=",
        f"--logfile={logPath}",
        "pushsvc",
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        "--data-dir",
        str(dataDir),
        "--app-id",
        APP_ID,
        "--app-key",
        APP_KEY,
        *extra,
    ]
    return Node(name, port, dataDir, logPath, spawn(argv, logPath, env, nofile))


async def waitListening(
    proc: subprocess.Popen[bytes], port: int, logPath: Path, timeout: float = 60
) -> None:
    """Fires once something accepts on C{port}; fails if the process ends first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if proc.poll() is not None:
            tail = logPath.read_text(errors="replace").strip().splitlines()[-1:]
            raise NodeFailed(f"exited with {proc.returncode}: {' '.join(tail)[:200]}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if loop.time() > deadline:
                raise NodeFailed(f"nothing listens on {port} after {timeout} s") from None
            await asyncio.sleep(0.1)


async def waitNode(node: Node) -> None:
    try:
        await waitListening(node.proc, node.port, node.logPath)
    except NodeFailed as e:
        node.error = str(e)


@dataclass
class Redis:
    """A private C{redis-server} on a spare loopback port, no persistence."""

    port: int
    password: str | None
    proc: subprocess.Popen[bytes]
    logPath: Path

    @classmethod
    def start(cls, work: Path, name: str, password: str | None = None) -> Redis:
        port = freePort()
        logPath = work / f"{name}.log"
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
        argv = [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--enable-debug-command",
            "local",
        ]
        if password:
            argv += ["--requirepass", password]
        return cls(port, password, spawn(argv, logPath), logPath)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


async def redisCall(port: int, *args: str, password: str | None = None, timeout: float = 5) -> Any:
    """One Redis command on a fresh connection; fires with the decoded reply."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    _track(writer)

    async def read() -> Any:
        line = (await reader.readline()).rstrip(b"\r\n")
        kind, rest = line[:1], line[1:].decode()
        if kind == b"*":
            return [await read() for _ in range(int(rest))]
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else (await reader.readexactly(n + 2))[:-2].decode()
        if kind == b"-":
            raise RuntimeError(f"Redis: {rest}")
        return int(rest) if kind == b":" else rest

    def command(*parts: str) -> bytes:
        out = f"*{len(parts)}\r\n".encode()
        for p in parts:
            b = p.encode()
            out += b"$%d\r\n%s\r\n" % (len(b), b)
        return out

    try:
        if password:
            writer.write(command("AUTH", password))
            await asyncio.wait_for(read(), timeout)
        writer.write(command(*args))
        return await asyncio.wait_for(read(), timeout)
    finally:
        abort(writer)


async def waitRedis(redis: Redis, timeout: float = 15) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            if await redisCall(redis.port, "PING", password=redis.password) == "PONG":
                return
        except (OSError, RuntimeError):
            pass
        if redis.proc.poll() is not None or loop.time() > deadline:
            raise RuntimeError(f"redis-server on {redis.port} did not start; see {redis.logPath}")
        await asyncio.sleep(0.1)


# -- probes ----------------------------------------------------------------------------------


@dataclass
class Row:
    probe: str
    result: str
    expected: str
    ok: bool


@dataclass
class Ctx:
    quick: bool
    work: Path
    nodes: dict[str, Node] = field(default_factory=dict)
    redis: Redis | None = None
    redisPw: Redis | None = None
    badPassword: str = ""
    only: tuple[str, ...] = ()  # --only: names (parts) of the probes to run

    def node(self, name: str) -> Node:
        node = self.nodes[name]
        node.pid  # noqa: B018 -- raises NodeFailed for a server that did not start
        return node


Result = tuple[str, bool]
Probe = Callable[[Ctx], Awaitable[Result]]


@dataclass
class ProbeSpec:
    name: str
    expected: str
    run: Probe
    timeout: float = 90


async def guard(ctx: Ctx, spec: ProbeSpec) -> Row:
    """Run one probe: its row, with its error in it if it crashed or ran out of time."""
    _opened.set([])
    try:
        result, ok = await asyncio.wait_for(spec.run(ctx), spec.timeout)
    except Exception as e:
        text = str(e) or type(e).__name__
        result, ok = f"error: {type(e).__name__}: {text}"[:400], False
    finally:
        for writer in _opened.get():
            abort(writer)
    return Row(spec.name, result, spec.expected, ok)


class Bystander:
    """A subscriber whose publish-to-receive latency is measured every 200 ms."""

    def __init__(self, port: int, channel: str) -> None:
        self.port = port
        self.channel = channel
        self.latencies: list[float] = []
        self.missed = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Publish and wait for it every 200 ms until C{stop}; a publish not seen within 2 s
        (or any failure) counts as missed, and the subscriber is opened again."""
        loop = asyncio.get_running_loop()
        ws: WS | None = None
        seq = 0
        while not stop.is_set():
            seq += 1
            started = loop.time()
            try:
                if ws is None:
                    ws = await WS.open(self.port, timeout=2)
                    await ws.subscribe(self.channel)
                    started = loop.time()
                reply = await publish(self.port, self.channel, "tick", str(seq), timeout=2)
                if reply.status != 200:
                    raise RuntimeError(f"publish answered {reply.status}")
                while json.loads((await ws.event(2, "tick"))["data"]) != seq:
                    pass
                self.latencies.append((loop.time() - started) * 1000)
            except Exception:
                self.missed += 1
                if ws is not None:
                    ws.close()
                ws = None
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, started + 0.2 - loop.time()))
            except TimeoutError:
                pass
        if ws is not None:
            ws.close()

    def summary(self) -> str:
        seen = (
            f"max {max(self.latencies):.1f} ms over {len(self.latencies)} publishes"
            if self.latencies
            else "no publish seen"
        )
        return f"bystander {seen}" + (f", {self.missed} lost or over 2 s" if self.missed else "")

    @property
    def ok(self) -> bool:
        return bool(self.latencies) and not self.missed and max(self.latencies) < 50


def pipelining(path: str) -> Probe:
    async def run(ctx: Ctx) -> Result:
        node = ctx.node("main")
        duration = 10 if ctx.quick else 30
        loop = asyncio.get_running_loop()
        before = peak = rssMiB(node.pid)
        stop = asyncio.Event()
        bystander = Bystander(node.port, "bystander")
        watcher = asyncio.ensure_future(bystander.run(stop))
        _, writer = await openConn(node.port, rcvbuf=4096)
        chunk = requestBytes("GET", path, close=False) * 256
        sent = 0
        started = loop.time()
        stoppedEarly = ""
        while loop.time() - started < duration:
            if writer.transport.get_write_buffer_size() < len(chunk):
                writer.write(chunk)
                sent += 256
            try:
                await asyncio.wait_for(writer.drain(), 0.25)
            except TimeoutError:
                pass  # the server stopped reading: that is the point
            except ConnectionError:
                stoppedEarly = f", the server closed it after {loop.time() - started:.0f} s"
                break
            peak = max(peak, rssMiB(node.pid))
            if peak - before > 400:  # enough to tell, and bounded
                stoppedEarly = f", stopped after {loop.time() - started:.0f} s at +400 MiB"
                break
        stop.set()
        await watcher
        abort(writer)
        await asyncio.sleep(2)  # a measurement window: what the server keeps once it is gone
        after = rssMiB(node.pid)
        queued = writer.transport.get_write_buffer_size() // len(
            requestBytes("GET", path, close=False)
        )
        growth = peak - before
        return (
            f"RSS {before:.0f} -> {peak:.0f} MiB (+{growth:.1f}), {after:.0f} after close; "
            f"~{sent - queued:,} requests written in {duration} s{stoppedEarly}; "
            f"{bystander.summary()}"
        ), growth < 20 and bystander.ok

    return run


async def dribble(
    writer: asyncio.StreamWriter, reader: asyncio.StreamReader, data: bytes, limit: float
) -> tuple[float | None, int | None]:
    """
    Send C{data} one byte a second until the server closes; fires with (seconds until it
    closed or None, the status it answered or None).
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    status = None
    received = b""
    for i in range(int(limit)):
        try:
            writer.write(data[i % len(data) : i % len(data) + 1])
        except ConnectionError:
            return loop.time() - started, status
        try:
            chunk = await asyncio.wait_for(reader.read(4096), 1.0)
        except TimeoutError:
            continue
        except ConnectionError:
            return loop.time() - started, status
        if not chunk:
            return loop.time() - started, status
        received += chunk
        if status is None and received.startswith(b"HTTP/1.") and b" " in received[9:]:
            status = int(received[9:12])
    return None, status


async def probeDribbleHeader(ctx: Ctx) -> Result:
    node = ctx.node("main")
    reader, writer = await openConn(node.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    closed, status = await dribble(writer, reader, b"X-Dribble: " + b"a" * 100, 20)
    if closed is None:
        return "still open after 20 s", False
    return (
        f"closed after {closed:.1f} s" + (f" (answered {status})" if status else ""),
        closed <= 15,
    )


async def probeDribbleBody(ctx: Ctx) -> Result:
    node = ctx.node("main")
    path = f"/apps/{APP_ID}/events"
    body = json.dumps({"name": "e", "channel": "dribble", "data": "x" * 2000}).encode()
    reader, writer = await openConn(node.port)
    writer.write(
        requestBytes(
            "POST",
            f"{path}?{urlencode(signedParams('POST', path, body))}",
            b"",
            {"Content-Type": "application/json"},
            close=False,
        ).replace(b"Content-Length: 0", f"Content-Length: {len(body)}".encode())
    )
    # The deadline from --body-min-rate (1,024 bytes/s) + 10 s, and 3 s to spare.
    allowed = 10 + len(body) / 1024 + 3
    closed, status = await dribble(writer, reader, body, 25)
    if closed is None:
        return f"{len(body):,}-byte body at 1 byte/s: still open after 25 s", False
    return (
        f"{len(body):,}-byte body at 1 byte/s: closed after {closed:.1f} s"
        + (f" (answered {status})" if status else ""),
        closed <= allowed,
    )


async def holdWebSockets(port: int, sources: Iterable[str]) -> list[WS]:
    held = []
    for src in sources:
        held.append(await WS.open(port, src=src))
    return held


async def wsOutcome(port: int, src: str) -> str:
    """
    What a new WebSocket from C{src} gets: C{open}, C{close N} or C{HTTP N}. A refusal the
    protocol announces first (C{pusher:error} N, then close N, as Pusher does) reads C{close N}
    when both codes agree.
    """
    try:
        ws = await WS.open(port, src=src, established=False)
    except WSClosed as e:
        return f"close {e.code}"
    except Refused as e:
        return f"HTTP {e.status}"
    try:
        first = await ws.event(3)
    except WSClosed as e:
        return f"close {e.code}"
    except TimeoutError:
        ws.close()
        return "open, but silent"
    outcome = await ws.closedWith(3 if first.get("event") == "pusher:error" else 1)
    ws.close()
    if first.get("event") == "pusher:error":
        code = (first.get("data") or {}).get("code")
        return f"close {outcome}" if code == outcome else f"pusher:error {code}, close {outcome}"
    return "open" if outcome == "open" else f"close {outcome}"


async def probeCapsPerIp(ctx: Ctx) -> Result:
    node = ctx.node("caps-ip")
    held = await holdWebSockets(node.port, ["127.0.0.1"] * 50)
    http51 = await http(node.port, "GET", "/healthz")
    ws51 = await wsOutcome(node.port, "127.0.0.1")
    other = await http(node.port, "GET", "/healthz", src="127.0.0.2")
    for ws in held:
        ws.close()
    return (
        f"50 WebSockets from 127.0.0.1 held; 51st HTTP {http51.short()}, 51st WebSocket "
        f"{ws51}; from 127.0.0.2 HTTP {other.status}",
        http51.status == 503 and ws51 == "close 4100" and other.status == 200,
    )


async def probeCapsProcess(ctx: Ctx) -> Result:
    node = ctx.node("caps-proc")
    held = await holdWebSockets(node.port, ["127.0.0.2"] * 25 + ["127.0.0.3"] * 25)
    http51 = await http(node.port, "GET", "/healthz", src="127.0.0.4")
    ws51 = await wsOutcome(node.port, "127.0.0.4")
    for ws in held:
        ws.close()
    return (
        f"50 WebSockets from two addresses held; 51st (a third address) HTTP "
        f"{http51.short()}, WebSocket {ws51}",
        http51.status == 503 and ws51 == "close 4100",
    )


async def probeFds(ctx: Ctx) -> Result:
    """
    300 connections that never finish their headers (a byte a second, as in the issue) against
    256 fds: how much CPU and how many log lines the server spends while saturated, and when a
    publish works again (the header deadline frees the fds) while they are still being held.
    """
    node = ctx.node("fds")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    async def halfOpen() -> bool:
        try:
            _, writer = await openConn(node.port, timeout=3)
        except NET_ERRORS:
            return False
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        while not stop.is_set() and not writer.transport.is_closing():
            try:
                await asyncio.wait_for(stop.wait(), 1)
            except TimeoutError:
                writer.write(b"X")
        abort(writer)
        return True

    fdsBefore = openFds(node.pid)
    holders = [asyncio.ensure_future(halfOpen()) for _ in range(300)]
    await asyncio.sleep(3)  # the connects have been tried (each gives up after 3 s)
    offset, cpu0, t0 = node.logSize(), cpuSeconds(node.pid), loop.time()
    peakFds = openFds(node.pid)
    recovered = None
    attempts: dict[str, int] = {}
    while loop.time() - t0 < 20:
        try:
            status = str((await publish(node.port, "fds", "e", "{}", timeout=2)).status)
        except NET_ERRORS as e:
            status = type(e).__name__
        attempts[status] = attempts.get(status, 0) + 1
        peakFds = max(peakFds, openFds(node.pid))
        if status == "200":
            recovered = loop.time() - t0
            break
        await asyncio.sleep(0.25)
    elapsed = loop.time() - t0
    cpuShare = (cpuSeconds(node.pid) - cpu0) / elapsed
    lines = len(node.logSince(offset))
    stop.set()
    connected = sum(await asyncio.gather(*holders))
    failed = ", ".join(f"{n} x {s}" for s, n in attempts.items() if s != "200")
    text = (
        f"{connected}/300 connected and held, server fds {fdsBefore} -> {peakFds}; "
        + (
            f"a publish ok after {recovered:.1f} s"
            if recovered is not None
            else "no publish ok within 20 s"
        )
        + (f" (before: {failed})" if failed else "")
        + f"; meanwhile CPU {cpuShare:.0%}, {lines} log lines"
    )
    return text, cpuShare < 0.2 and lines <= 20 and recovered is not None and recovered <= 15


async def probeRange100(ctx: Ctx) -> Result:
    node = ctx.node("main")
    size = len((await http(node.port, "GET", "/app.js")).body)
    reply = await http(
        node.port, "GET", "/app.js", headers={"Range": "bytes=" + ",".join(["0-"] * 100)}
    )
    return (
        f"{reply.status}, {len(reply.body):,} bytes for a {size:,}-byte file",
        0 < len(reply.body) <= size,
    )


async def probeRange1500(ctx: Ctx) -> Result:
    node = ctx.node("main")
    loop = asyncio.get_running_loop()
    fdsBefore = openFds(node.pid)
    started = loop.time()
    try:
        reply = await http(
            node.port,
            "GET",
            "/app.js",
            timeout=5,
            headers={"Range": "bytes=" + ",".join(["0-"] * 1500)},
        )
        got = f"{reply.status} with {len(reply.body):,} bytes in {loop.time() - started:.2f} s"
        complete = True
    except NET_ERRORS as e:
        got, complete = f"no complete reply within 5 s ({type(e).__name__})", False
    fdsAfter = openFds(node.pid)
    t0 = loop.time()
    while fdsAfter > fdsBefore and loop.time() - t0 < 3:
        await asyncio.sleep(0.1)
        fdsAfter = openFds(node.pid)
    return f"{got}; server fds {fdsBefore} before, {fdsAfter} after", (
        complete and fdsAfter <= fdsBefore
    )


_formats: dict[int, str] = {}


async def notifyFormat(port: int) -> str:
    """C{"channel-bound"} if the server takes issue 11's signature, C{"legacy"} if the old."""
    if port in _formats:
        return _formats[port]
    for name in ("channel-bound", "legacy"):
        ts = str(int(time.time()))
        # A body of its own each time: an identical request would be a replay (409).
        body = json.dumps({"event": "format-check", "data": secrets.token_hex(8)}).encode()
        reply = await notify(port, "abuse-format", body, ts, sign(name, ts, "abuse-format", body))
        if reply.status == 202:
            _formats[port] = name
            return name
    raise RuntimeError(f"/notify accepted neither signature format ({reply.status})")


def sign(fmt: str, ts: str, channel: str, body: bytes) -> str:
    if fmt == "legacy":
        return "sha256=" + legacyNotifySignature(APP_SECRET, ts, body)
    return "sha256=" + notifySignature(APP_SECRET, ts, channel, body)


async def notify(port: int, path: str, body: bytes, ts: str, signature: str) -> Reply:
    return await http(
        port,
        "POST",
        f"/notify/{path}",
        body,
        {
            "Content-Type": "application/json",
            "X-Pushsvc-Timestamp": ts,
            "X-Pushsvc-Signature": signature,
        },
    )


async def probeNotifyReplay(ctx: Ctx) -> Result:
    node = ctx.node("main")
    fmt = await notifyFormat(node.port)
    watcher = await WS.open(node.port)
    await watcher.subscribe("private-admin")
    ts = str(int(time.time()))
    body = json.dumps({"event": "updated", "data": {"order": 1}}).encode()
    signature = sign(fmt, ts, "public-orders", body)
    first = await notify(node.port, "public-orders", body, ts, signature)
    admin = await notify(node.port, "private-admin", body, ts, signature)
    user = await notify(node.port, "%23server-to-user-u1", body, ts, signature)
    again = await notify(node.port, "public-orders", body, ts, signature)
    leaked = 0
    try:
        while True:
            await watcher.event(1, "updated")
            leaked += 1
    except TimeoutError:
        pass
    return (
        f"signed for public-orders ({fmt} format): accepted {first.status}; replayed to "
        f"private-admin {admin.short()}, to #server-to-user-u1 {user.short()}; identical "
        f"replay {again.short()}; the private subscriber got {leaked}",
        first.status == 202
        and admin.status == 401
        and user.status == 401
        and again.status == 409
        and again.isJSONError
        and leaked == 0,
    )


async def probeNotifyCluster(ctx: Ctx) -> Result:
    one, two = ctx.node("redis-1"), ctx.node("redis-2")
    fmt = await notifyFormat(one.port)
    ts = str(int(time.time()))
    body = b'{"event":"updated","data":{"cluster":true}}'
    signature = sign(fmt, ts, "public-orders", body)
    first = await notify(one.port, "public-orders", body, ts, signature)
    replay = await notify(two.port, "public-orders", body, ts, signature)
    return (
        f"accepted on node 1: {first.status}; the identical request on node 2: {replay.short()}",
        first.status == 202 and replay.status == 409,
    )


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


async def probeNestedJSON(ctx: Ctx) -> Result:
    node = ctx.node("main")
    offset = node.logSize()
    fmt = await notifyFormat(node.port)
    deep = nested(4000)
    # /api/session takes 4 KiB bodies: 2,000 deep is as deep as fits, and deeper than
    # Python's recursion limit.
    sessionBody = b'{"name":' + nested(2000) + b"}"
    replies = {
        "/api/session (2,000 deep)": await http(
            node.port, "POST", "/api/session", sessionBody, jsonHeaders()
        )
    }
    ts = str(int(time.time()))
    replies["/notify/x"] = await notify(node.port, "x", deep, ts, sign(fmt, ts, "x", deep))
    path = f"/apps/{APP_ID}/events"
    replies["/apps/{id}/events"] = await http(
        node.port,
        "POST",
        f"{path}?{urlencode(signedParams('POST', path, deep))}",
        deep,
        jsonHeaders(),
    )
    await asyncio.sleep(0.5)  # let the log be written
    logged = "\n".join(node.logSince(offset))
    tracebacks = logged.count("Traceback") + logged.count("RecursionError")
    return (
        "; ".join(f"{k} {r.short()}" for k, r in replies.items())
        + f"; {tracebacks} Traceback/RecursionError in the log",
        all(r.status == 400 and r.isJSONError for r in replies.values()) and not tracebacks,
    )


async def probeQueryParams(ctx: Ctx) -> Result:
    node = ctx.node("main")
    plain = await publish(node.port, "query", "e", "{}")
    caseVariant = await publish(node.port, "query", "e", "{}", extraQuery="&Auth_Signature=zzz")
    repeated = await publish(node.port, "query", "e", "{}", extraQuery=f"&auth_key={APP_KEY}")
    return (
        f"signed publish {plain.status}; + &Auth_Signature=zzz {caseVariant.short()}; "
        f"+ a second auth_key {repeated.short()}",
        plain.status == 200 and caseVariant.status == 400 and repeated.status == 400,
    )


async def probeSocketIds(ctx: Ctx) -> Result:
    node = ctx.node("main")
    ids = []
    for _ in range(200):
        ws = await WS.open(node.port)
        ids.append(ws.socketId)
        ws.close()
    malformed = [i for i in ids if not re.fullmatch(r"[0-9]+\.[0-9]+", i)]
    firsts = {i.partition(".")[0] for i in ids}
    seconds = {i.partition(".")[2] for i in ids}
    parts = [p for i in ids for p in i.split(".")]
    return (
        f"200 ids, e.g. {ids[0]}, {ids[1]}: {len(firsts)} distinct first parts, "
        f"{len(seconds)} distinct second parts, {len(parts) - len(set(parts))} repeats in "
        f"all, {len(malformed)} not digits.digits",
        not malformed and len(set(parts)) == len(parts) == 400,
    )


async def probeNewline(ctx: Ctx) -> Result:
    node = ctx.node("main")
    cookie = await session(node.port, "newline")
    room = await http(
        node.port, "POST", "/api/rooms/general%0A/messages", b'{"text":"hi"}', jsonHeaders(cookie)
    )
    auth = await http(
        node.port,
        "POST",
        "/api/pusher/auth",
        b"socket_id=1.2%0A&channel_name=presence-room-general",
        {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie},
    )
    return (
        f"POST /api/rooms/general%0A/messages {room.short()}; /api/pusher/auth with "
        f"socket_id=1.2%0A {auth.short()}",
        room.status == 400 and auth.status == 400,
    )


async def probeRedisKill(ctx: Ctx) -> Result:
    one, two = ctx.node("redis-1"), ctx.node("redis-2")
    assert ctx.redis is not None
    ws = await WS.open(one.port)
    await ws.subscribe("kill-probe")
    name = f"pushsvc-{one.pid}:commands"
    clients = await redisCall(ctx.redis.port, "CLIENT", "LIST")
    ids = [
        re.search(r"\bid=(\d+)", line).group(1)  # type: ignore[union-attr]
        for line in clients.splitlines()
        if f" name={name} " in f" {line} "
    ]
    if not ids:
        raise RuntimeError(f"no client named {name} in CLIENT LIST")
    killed = await redisCall(ctx.redis.port, "CLIENT", "KILL", "ID", ids[0])
    outcome = await ws.closedWith(3)
    delivered = "n/a (closed)"
    if outcome == "open":
        reply = await publish(two.port, "kill-probe", "after-kill", "{}")
        try:
            await ws.event(5, "after-kill")
            delivered = f"yes ({reply.status})"
        except (TimeoutError, WSClosed):
            delivered = f"no ({reply.status})"
    return (
        f"killed {name} ({killed}); its WebSocket after 3 s: "
        f"{'still open' if outcome == 'open' else f'closed {outcome}'}; a publish on "
        f"node 2 reached it: {delivered}",
        outcome == "open",
    )


async def waitHealthy(port: int, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            if (await http(port, "GET", "/healthz", timeout=2)).status == 200:
                return True
        except NET_ERRORS:
            pass
        await asyncio.sleep(0.2)
    return False


async def probeRedisStall(ctx: Ctx) -> Result:
    one, two = ctx.node("redis-1"), ctx.node("redis-2")
    assert ctx.redis is not None
    loop = asyncio.get_running_loop()
    if not await waitHealthy(one.port, 15):
        raise RuntimeError("node 1 is not healthy before the stall")
    clients = [await WS.open(n.port) for n in (one, two)]
    for ws in clients:
        await ws.subscribe("stall-probe")
    sleeper = asyncio.ensure_future(redisCall(ctx.redis.port, "DEBUG", "SLEEP", "7", timeout=12))
    await asyncio.sleep(0.1)  # the DEBUG SLEEP has reached Redis
    t0 = loop.time()

    async def degraded() -> float | None:
        while loop.time() - t0 < 4:
            try:
                if (await http(one.port, "GET", "/healthz", timeout=4)).status == 503:
                    return loop.time() - t0
            except NET_ERRORS:
                pass
            await asyncio.sleep(0.1)
        return None

    async def publishing() -> tuple[str, float]:
        try:
            status = str((await publish(one.port, "stall-probe", "e", "{}", timeout=9)).status)
        except NET_ERRORS:
            status = "no answer"
        return status, loop.time() - t0

    health, (status, took) = await asyncio.gather(degraded(), publishing())
    codes = await asyncio.gather(
        *(ws.closedWith(max(0.5, t0 + 9.5 - loop.time())) for ws in clients)
    )
    await sleeper
    healed = await waitHealthy(one.port, 15) and await waitHealthy(two.port, 15)
    closed = ", ".join(
        f"node {i + 1}: {'open' if c == 'open' else f'closed {c}'}" for i, c in enumerate(codes)
    )
    return (
        "/healthz 503 "
        + (f"after {health:.1f} s" if health is not None else "not within 4 s")
        + f"; a publish answered {status} after {took:.1f} s; clients 2.5 s after the "
        f"stall: {closed}; healthy again: {'yes' if healed else 'no'}",
        health is not None and health <= 2 and status == "503" and took <= 2,
    )


async def probeWrongPassword(ctx: Ctx) -> Result:
    node = ctx.nodes["bad-password"]
    assert ctx.redisPw is not None
    try:
        await waitListening(node.proc, node.port, node.logPath, 20)
    except NodeFailed as e:
        if node.proc.poll() is not None:
            raise
        node.error = ""  # running but not listening: watch its log anyway
        del e
    offset = node.logSize()
    await asyncio.sleep(20)  # the window whose log lines are counted
    lines = node.logSince(offset)
    address = f"127.0.0.1:{ctx.redisPw.port}"
    withAddress = sum(address in line for line in lines)
    leaked = ctx.badPassword in node.log()
    return (
        f"{len(lines)} log lines in 20 s, {withAddress} of them name {address}; password "
        f"{'IN the log' if leaked else 'not in the log'}",
        1 <= len(lines) <= 10 and withAddress == len(lines) and not leaked,
    )


async def probeChatRate(ctx: Ctx) -> Result:
    node = ctx.node("main")
    cookie = await session(node.port, "flooder")
    loop = asyncio.get_running_loop()
    counts: dict[int, int] = {}
    retryAfter = None
    started = loop.time()
    while loop.time() - started < 5:
        reply = await http(
            node.port,
            "POST",
            "/api/rooms/abuse-rate/messages",
            b'{"text":"flood"}',
            jsonHeaders(cookie),
        )
        counts[reply.status] = counts.get(reply.status, 0) + 1
        if reply.status == 429 and retryAfter is None:
            retryAfter = reply.headers.get("retry-after", "missing")
    stored = counts.get(201, 0)
    return (
        "5 s of posts: "
        + ", ".join(f"{n:,} x {s}" for s, n in sorted(counts.items()))
        + (f"; Retry-After: {retryAfter}" if retryAfter else ""),
        retryAfter not in (None, "missing") and stored <= 30,
    )


async def probeLogout(ctx: Ctx) -> Result:
    node = ctx.node("main")
    cookie = await session(node.port, "leaver")
    out = await http(node.port, "DELETE", "/api/session", headers={"Cookie": cookie})
    # GET /api/session answers 200 {"signed_in": false} without a valid session (issue 16);
    # a post with the old cookie must be refused.
    after = await http(node.port, "GET", "/api/session", headers={"Cookie": cookie})
    post = await http(
        node.port,
        "POST",
        "/api/rooms/general/messages",
        json.dumps({"text": "still here?"}).encode(),
        jsonHeaders(cookie),
    )
    signedIn = (after.json() or {}).get("signed_in") if after.status == 200 else None
    return (
        f"DELETE /api/session {out.short()}; the old cookie then: GET /api/session "
        f"{after.status} signed_in={signedIn}, a post {post.status}",
        200 <= out.status < 300
        and (after.status == 401 or signedIn is False)
        and post.status == 401,
    )


async def probeNames(ctx: Ctx) -> Result:
    node = ctx.node("main")
    outcomes, ok = [], True
    for label, name in (("U+202E", "Mall\u202eory"), ("U+200B", "zero\u200bwidth")):
        reply = await http(
            node.port, "POST", "/api/session", json.dumps({"name": name}).encode(), jsonHeaders()
        )
        got = (reply.json() or {}).get("name", "") if reply.status == 200 else ""
        if reply.status == 400:
            outcomes.append(f"{label}: 400 (refused)")
        elif reply.status == 200 and "\u202e" not in got and "\u200b" not in got:
            outcomes.append(f"{label}: 200, normalised to {got!r}")
        else:
            outcomes.append(f"{label}: {reply.status}, name {got!r} kept")
            ok = False
    return "; ".join(outcomes), ok


async def probeFiles(ctx: Ctx) -> Result:
    node = ctx.nodes["main"]
    modes = {"data dir": node.dataDir.stat().st_mode & 0o777}
    for path in sorted(node.dataDir.iterdir()):
        if path.name.startswith("pushsvc.sqlite3") or path.name in ("session-key", "app-secret"):
            modes[path.name] = path.stat().st_mode & 0o777
    ok = (
        modes["data dir"] == 0o700
        and len(modes) > 1
        and all(mode == 0o600 for name, mode in modes.items() if name != "data dir")
    )
    return ", ".join(f"{name} {mode:04o}" for name, mode in modes.items()), ok


async def probeSlowConsumer(ctx: Ctx) -> Result:
    """
    A subscriber that stops reading while 10 kB events are published, until the server says it
    closes it as a slow consumer; then it reads what arrived. The 4100 close frame comes after
    the unread data, and the server may drop the connection before the client gets that far, so
    the server's log line naming the socket is taken as the close too.
    """
    node = ctx.node("main")
    loop = asyncio.get_running_loop()
    offset = node.logSize()
    slow = await WS.open(node.port, rcvbuf=4096)
    await slow.subscribe("slow-probe")
    reader = await WS.open(node.port)
    await reader.subscribe("slow-probe")
    readerGot = 0

    async def read() -> None:
        nonlocal readerGot
        while True:
            await reader.event(10, "big")
            readerGot += 1

    readerTask = asyncio.ensure_future(read())
    data = "x" * 10000
    published = 0
    logged = False
    started = loop.time()
    while published < 2000 and loop.time() - started < 20 and not logged:
        if (await publish(node.port, "slow-probe", "big", data)).status == 200:
            published += 1
        if published % 20 == 0:
            logged = any(
                "slow consumer" in line and slow.socketId in line for line in node.logSince(offset)
            )
    events = 0
    code: int | None | str = "open"
    try:
        while True:
            await slow.event(15, "big")
            events += 1
    except WSClosed as e:
        code = e.code
    except TimeoutError:
        pass
    deadline = loop.time() + 10
    while readerGot < published and loop.time() < deadline and not readerTask.done():
        await asyncio.sleep(0.1)
    readerTask.cancel()
    logged = logged or any(
        "slow consumer" in line and slow.socketId in line for line in node.logSince(offset)
    )
    closed = (
        "stayed open" if code == "open" else "was dropped" if code is None else f"got close {code}"
    )
    return (
        f"{published} events of 10 kB published: the unread client read {events}, then "
        f"{closed}; the server logged it as a slow consumer: {'yes' if logged else 'no'}; "
        f"a reading client got {readerGot}",
        (code == 4100 or (code is None and logged)) and readerGot == published,
    )


async def probeBadFrames(ctx: Ctx) -> Result:
    node = ctx.node("main")
    ws = await WS.open(node.port)
    ws.send(b"not json")
    error = await ws.event(5, "pusher:error")
    ws.sendJSON({"event": "pusher:ping", "data": {}})
    await ws.event(5, "pusher:pong")
    outcomes = [f"not JSON: pusher:error {error['data']['code']}, still open"]
    codes = []
    for label, payload in (("not UTF-8", b'{"event":"\xff"}'), ("70 kB", b"x" * 70000)):
        bad = await WS.open(node.port)
        bad.send(payload)
        code = await bad.closedWith(5)
        codes.append(code)
        outcomes.append(f"{label}: close {code}")
    return "; ".join(outcomes), error["data"]["code"] == 4002 and codes == [1007, 1009]


async def probeCycles(ctx: Ctx) -> Result:
    node = ctx.node("main")
    cycles = 500 if ctx.quick else 2000

    async def worker(n: int) -> None:
        for _ in range(n):
            ws = await WS.open(node.port)
            ws.send(struct.pack("!H", 1000), 8)
            await ws.closedWith(2)
            ws.close()

    await asyncio.gather(*(worker(10) for _ in range(10)))  # warm-up
    before = rssMiB(node.pid)
    await asyncio.gather(*(worker(cycles // 10) for _ in range(10)))
    await asyncio.sleep(2)  # let closing connections go
    after = rssMiB(node.pid)
    return (
        f"RSS {before:.1f} -> {after:.1f} MiB over {cycles:,} connect/disconnect cycles",
        after - before < 10,
    )


def secretsFound(ctx: Ctx) -> dict[str, list[str]]:
    """Where the app secret or a session key appears: in a log, or in an error reply."""
    wanted = {"the app secret": APP_SECRET}
    for node in ctx.nodes.values():
        keyFile = node.dataDir / "session-key"
        if keyFile.exists():
            wanted[f"{node.name}'s session key"] = keyFile.read_text().strip()
    found: dict[str, list[str]] = {}
    for label, secret in wanted.items():
        if not secret:
            continue
        places = [node.name + " log" for node in ctx.nodes.values() if secret in node.log()]
        if any(secret.encode() in body for body in ERROR_BODIES):
            places.append("an error reply")
        if places:
            found[label] = places
    return found


async def probeSecrets(ctx: Ctx) -> Result:
    found = secretsFound(ctx)
    if found:
        return "; ".join(f"{k} in {', '.join(v)}" for k, v in found.items()), False
    logs = sum(1 for node in ctx.nodes.values() if node.logPath.exists())
    return f"none in {logs} server logs or {len(ERROR_BODIES)} error replies", True


PIPELINE_EXPECTED = "RSS growth < 20 MiB; bystander publish-to-receive max < 50 ms"
PROBES = [
    ProbeSpec("pipelined GET /metrics, never read", PIPELINE_EXPECTED, pipelining("/metrics")),
    ProbeSpec("pipelined GET /nope (404), never read", PIPELINE_EXPECTED, pipelining("/nope")),
    ProbeSpec("pipelined GET /, never read", PIPELINE_EXPECTED, pipelining("/")),
    ProbeSpec(
        "request header dribbled at 1 byte/s",
        "closed within 15 s (--header-timeout 10)",
        probeDribbleHeader,
    ),
    ProbeSpec(
        "request body dribbled at 1 byte/s",
        "closed within 10 s + size/1,024 s (--body-min-rate 1024) + 3 s",
        probeDribbleBody,
    ),
    ProbeSpec(
        "many connections from one IP",
        "with --max-connections-per-ip 50: 51st HTTP 503, "
        "51st WebSocket close 4100, another IP 200",
        probeCapsPerIp,
    ),
    ProbeSpec(
        "connections over the process cap",
        "with --max-connections 50: 51st HTTP 503, WebSocket close 4100",
        probeCapsProcess,
    ),
    ProbeSpec(
        "fd exhaustion: RLIMIT_NOFILE 256, 300 half-open connections",
        "CPU < 20% and <= 20 log lines while saturated; a publish ok within 15 s "
        "though they are held (the header deadline frees their fds)",
        probeFds,
    ),
    ProbeSpec("Range: 100 x bytes=0- on /app.js", "bytes returned <= the file size", probeRange100),
    ProbeSpec(
        "Range: 1,500 x bytes=0- on /app.js",
        "a complete reply within 5 s; server fds back to where they were",
        probeRange1500,
    ),
    ProbeSpec(
        "/notify signed for public-orders, replayed",
        "202 once; other channels 401; identical replay 409 (JSON); private subscriber "
        "gets nothing",
        probeNotifyReplay,
    ),
    ProbeSpec(
        "/notify replayed across two Redis nodes",
        "202 on node 1, 409 on node 2",
        probeNotifyCluster,
    ),
    ProbeSpec(
        "JSON nested 4,000 deep",
        "400 with a JSON body each; no traceback in the log",
        probeNestedJSON,
    ),
    ProbeSpec(
        "repeated / case-variant query parameter on a signed API request",
        "400 (a plain signed request 200)",
        probeQueryParams,
    ),
    ProbeSpec("socket ids of 200 WebSockets", "digits.digits; no part repeats", probeSocketIds),
    ProbeSpec("newline in a room name and a socket id", "400 and 400", probeNewline),
    ProbeSpec(
        "Redis: only the commands connection killed",
        "the node's WebSocket stays open (no 4200)",
        probeRedisKill,
    ),
    ProbeSpec(
        "Redis stalls 7 s (DEBUG SLEEP 7)",
        "/healthz 503 within 2 s; a publish 503 within 2 s",
        probeRedisStall,
        60,
    ),
    ProbeSpec(
        "wrong Redis password",
        "1-10 log lines in 20 s, each naming the address; never the password",
        probeWrongPassword,
        60,
    ),
    ProbeSpec(
        "chat: one session posting as fast as it can",
        "429 with Retry-After; <= 30 stored (bursts of 20, 60/min)",
        probeChatRate,
    ),
    ProbeSpec("chat: DELETE /api/session, then the old cookie", "2xx, then 401", probeLogout),
    ProbeSpec("chat: display name with U+202E / U+200B", "400, or normalised away", probeNames),
    ProbeSpec("files in the data dir", "data dir 0700; database and key files 0600", probeFiles),
    ProbeSpec(
        "held: a slow WebSocket consumer",
        "closed with 4100; a reading client gets all",
        probeSlowConsumer,
    ),
    ProbeSpec(
        "held: bad WebSocket frames",
        "not JSON: pusher:error 4002 and open; not UTF-8: 1007; 70 kB: 1009",
        probeBadFrames,
    ),
    ProbeSpec("held: connect/disconnect cycles", "RSS growth < 10 MiB", probeCycles, 180),
    ProbeSpec("held: no secret in a log or an error reply", "none found", probeSecrets),
]
SPECS = {spec.run: spec for spec in PROBES}


async def runProbes(ctx: Ctx) -> list[Row]:
    rows: dict[str, Row] = {}

    async def one(run: Probe) -> None:
        spec = SPECS[run]
        rows[spec.name] = await guard(ctx, spec)
        print(
            f"  {'ok ' if rows[spec.name].ok else 'NO '} {spec.name}", file=sys.stderr, flush=True
        )

    async def inOrder(*runs: Probe) -> None:
        for run in runs:
            await one(run)

    if ctx.only:
        chosen = [spec for spec in PROBES if any(w in spec.name for w in ctx.only)]
        await inOrder(*(spec.run for spec in chosen))
        return [rows[spec.name] for spec in chosen]

    background = asyncio.ensure_future(one(probeWrongPassword))
    await inOrder(*(spec.run for spec in PROBES[:3]))
    # Timers and the quick checks overlap: none of these measures memory or fds.
    await asyncio.gather(
        one(probeDribbleHeader),
        one(probeDribbleBody),
        inOrder(
            probeNestedJSON,
            probeQueryParams,
            probeSocketIds,
            probeNewline,
            probeNotifyReplay,
            probeChatRate,
            probeLogout,
            probeNames,
        ),
    )
    await inOrder(
        probeRange100,
        probeRange1500,
        probeCapsPerIp,
        probeCapsProcess,
        probeFds,
        probeNotifyCluster,
        probeRedisKill,
        probeRedisStall,
        probeSlowConsumer,
        probeBadFrames,
        probeCycles,
        probeFiles,
    )
    await background
    await one(probeSecrets)
    return [rows[spec.name] for spec in PROBES]


def table(rows: list[Row]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    out = ["| probe | result | expected | ok |", "|---|---|---|---|"]
    out += [
        f"| {cell(r.probe)} | {cell(r.result)} | {cell(r.expected)} | {'yes' if r.ok else 'no'} |"
        for r in rows
    ]
    return "\n".join(out)


async def main(args: argparse.Namespace, work: Path) -> list[Row]:
    ctx = Ctx(args.quick, work)
    ctx.only = tuple(args.only)
    # Ctrl-C or SIGTERM cancel the run (even when started with SIGINT ignored, as a background
    # job is); the caller then ends every process it started.
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
    ctx.redis = Redis.start(work, "redis")
    ctx.badPassword = "wrong-" + secrets.token_hex(8)
    ctx.redisPw = Redis.start(work, "redis-password", password="right-" + secrets.token_hex(8))
    await asyncio.gather(waitRedis(ctx.redis), waitRedis(ctx.redisPw))
    badURL = f"redis://:{ctx.badPassword}@127.0.0.1:{ctx.redisPw.port}/0"
    for name, extra, nofile in (
        ("main", [], None),
        ("caps-ip", ["--max-connections-per-ip", "50"], None),
        ("caps-proc", ["--max-connections", "50"], None),
        ("fds", [], 256),
        ("redis-1", ["--redis", ctx.redis.url], None),
        ("redis-2", ["--redis", ctx.redis.url], None),
        ("bad-password", ["--redis", badURL], None),
    ):
        ctx.nodes[name] = startNode(work, name, extra, nofile)
    await asyncio.gather(*(waitNode(n) for n in ctx.nodes.values() if n.name != "bad-password"))
    for node in ctx.nodes.values():
        if node.error:
            print(f"  server {node.name} did not start: {node.error}", file=sys.stderr)
    return await runProbes(ctx)


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="shorter floods, fewer cycles")
    parser.add_argument("--keep", action="store_true", help="keep the logs and data dirs")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="TEXT",
        help="run only the probes whose name contains TEXT (repeatable)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pushsvc-abuse-"))
    started = time.monotonic()
    try:
        rows = asyncio.run(main(args, work))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: the servers it started are stopped", file=sys.stderr)
        return 130
    finally:
        stopAll()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    output = table(rows)
    print(output)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / time.strftime("abuse-%Y%m%d-%H%M%S.md")).write_text(output + "\n")
    print(
        f"\n{sum(r.ok for r in rows)}/{len(rows)} ok in {time.monotonic() - started:.0f} s"
        + (f"; logs in {work}" if args.keep else ""),
        file=sys.stderr,
    )
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(cli())
