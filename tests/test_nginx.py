"""
The chat through a real nginx (Debian's) configured from C{docs/nginx.conf}, over TLS, in headless
Chromium: pages, the session cookie, posting and the WebSocket all go through the proxy, and
pushsvc sees the browser's address, not nginx's.

nginx connects to pushsvc from 127.0.0.2 (C{proxy_bind}, added by the test), the one trusted
proxy; the browser is at 127.0.0.1, so a log line naming 127.0.0.1 shows that the address came
from C{X-Forwarded-For}.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import queue
import re
import subprocess
import threading
from pathlib import Path

import pytest
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import freePort, requireService
from tests.syncserver import ServerProcess
from tests.test_browser import ARTIFACTS, ChatPage, launchBrowser

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NGINX = "/usr/sbin/nginx"
DOCS_CONF = Path(__file__).resolve().parent.parent / "docs" / "nginx.conf"
PROXY_ADDRESS = "127.0.0.2"  # nginx's side of its connections to pushsvc


def selfSignedCertificate(directory: Path) -> tuple[Path, Path]:
    """A throw-away certificate for 127.0.0.1 and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    certPath, keyPath = directory / "cert.pem", directory / "key.pem"
    certPath.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyPath.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    keyPath.chmod(0o600)
    return certPath, keyPath


def siteConfig(backend: int, https: int, http: int, cert: Path, key: Path) -> str:
    """docs/nginx.conf with this test's ports and certificate; each change must apply once,
    so the test keeps running what the documentation shows."""
    text = DOCS_CONF.read_text()
    for pattern, replacement in [
        (r"server 127\.0\.0\.1:8080;", f"server 127.0.0.1:{backend};"),
        (r"listen 443 ssl;", f"listen 127.0.0.1:{https} ssl;"),
        (r"listen \[::\]:443 ssl;\n", ""),
        (r"listen 80;", f"listen 127.0.0.1:{http};"),
        (r"listen \[::\]:80;\n", ""),
        (r"/etc/ssl/certs/chat\.example\.com\.pem", str(cert)),
        (r"/etc/ssl/private/chat\.example\.com\.key", str(key)),
    ]:
        text, n = re.subn(pattern, replacement, text)
        assert n == 1, f"docs/nginx.conf no longer has {pattern!r} once"
    return text


class NginxProcess:
    """nginx in the foreground (C{daemon off}), logging to stderr; C{start()} returns once it
    listens (its "start worker process" notice comes after the sockets are bound)."""

    def __init__(self, directory: Path, site: str) -> None:
        self.directory = directory
        (directory / "site.conf").write_text(site)
        temp = " ".join(
            f"{kind}_temp_path {directory / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        user = "user root;\n" if os.geteuid() == 0 else ""
        (directory / "nginx.conf").write_text(
            f"daemon off;\n{user}pid {directory / 'nginx.pid'};\nerror_log stderr notice;\n"
            "worker_processes 1;\nevents { worker_connections 256; }\n"
            f"http {{\n  access_log off;\n  {temp}\n  proxy_bind {PROXY_ADDRESS};\n"
            f"  include {directory / 'site.conf'};\n}}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []

    def start(self, timeout: float = 20) -> None:
        self.proc = subprocess.Popen(
            [
                NGINX,
                "-e",
                "stderr",
                "-p",
                str(self.directory),
                "-c",
                str(self.directory / "nginx.conf"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        threading.Thread(target=self._read, daemon=True).start()
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError("nginx did not start:\n" + "".join(self.output)) from None
            if line is None:
                raise AssertionError("nginx exited:\n" + "".join(self.output))
            if "start worker process" in line:
                return

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace")
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # nginx's fast shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class NginxChatTests(SynchronousTestCase):
    def setUp(self) -> None:
        if not os.access(NGINX, os.X_OK):
            requireService("nginx", f"is not installed at {NGINX} (apt-get install nginx)")
        self.browser = launchBrowser(self, "--ignore-certificate-errors")
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        self.port = freePort()  # nginx's: it cannot say which port it bound
        self.server = ServerProcess(0, str(directory / "data"), "--trusted-proxies", PROXY_ADDRESS)
        self.server.start()
        backend = self.server.port
        self.addCleanup(self.server.kill)
        cert, key = selfSignedCertificate(directory)
        self.nginx = NginxProcess(directory, siteConfig(backend, self.port, freePort(), cert, key))
        self.nginx.start()
        self.addCleanup(self.nginx.stop)

    def test_chatThroughNginx(self) -> None:
        """
        Two people chat through nginx over TLS: the message one posts arrives live in the other's
        page (by WebSocket, through the proxy); the session cookie is Secure; pushsvc logs the
        browser's address (in the access log and the WebSocket lines); the run saves a
        screenshot.
        """
        base = f"https://127.0.0.1:{self.port}"
        ann = ChatPage(self.browser, base, "Ann")
        bob = ChatPage(self.browser, base, "Bob")
        ann.waitOnline(2)
        ann.post("Hello through nginx!")
        bob.waitForText("Hello through nginx!", timeout=2000)
        bob.post("Arrived live, WebSocket and all.")
        ann.waitForText("Arrived live, WebSocket and all.", timeout=2000)
        ARTIFACTS.mkdir(exist_ok=True)
        ann.page.screenshot(path=str(ARTIFACTS / "chat-through-nginx.png"))
        cookies = [c for c in ann.context.cookies() if c["domain"] == "127.0.0.1"]
        self.assertTrue(cookies, "no session cookie")
        self.assertTrue(all(c["secure"] for c in cookies), cookies)
        opened = self.server.waitFor("WebSocket open")
        self.assertIn("client 127.0.0.1,", opened)
        output = "".join(self.server.output)
        self.assertNotIn(f"client {PROXY_ADDRESS}", output)  # WebSocket lines
        self.assertNotIn(f'"{PROXY_ADDRESS}" - -', output)  # access log
        self.assertIn('"127.0.0.1" - - ', output)
        self.assertEqual(ann.errors + bob.errors, [])
