"""
The chat behind a reverse proxy: its same-origin check and its cookie's C{Secure} flag follow the
host and scheme a trusted proxy forwards (L{pushsvc.http.proxy.clientOf}), and only a trusted one's.
"""

from __future__ import annotations

import io
import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request

from pushsvc.apps import App, Apps
from pushsvc.chat import ChatAPI, SessionResource
from pushsvc.http.site import accessLogLine
from pushsvc.http.util import HTTPError
from pushsvc.session import SessionSigner
from pushsvc.store.memory import MemoryStore
from pushsvc.testing import FakeHub
from tests.test_proxy import request

PROXIED = {
    "x-forwarded-for": ["198.51.100.9"],
    "x-forwarded-proto": ["https"],
    "x-forwarded-host": ["chat.example.com"],
    "origin": ["https://chat.example.com"],
}


def chat() -> ChatAPI:
    return ChatAPI(
        Apps([App("1", "k", "s")]),
        MemoryStore(),
        FakeHub(),
        SessionSigner(b"k" * 32, lambda: 1000.0),
        Clock().seconds,
        lambda: True,
    )


def signIn(req: Request) -> str:
    """POST /api/session on C{req}; the Set-Cookie header it answers with."""
    req.requestHeaders.setRawHeaders(b"content-type", [b"application/json"])
    req.content = io.BytesIO(json.dumps({"name": "Ann"}).encode())
    req.method = b"POST"
    code, _ = SessionResource(chat()).handle_POST(req)
    assert code == 200
    cookies = req.responseHeaders.getRawHeaders(b"set-cookie")
    assert cookies, "no session cookie set"
    return cookies[0].decode()


class BehindProxyTests(SynchronousTestCase):
    def test_originFromTrustedProxy(self) -> None:
        """Behind a trusted proxy the page's origin is compared with the forwarded host (the
        backend's own Host header is nginx's upstream address)."""
        proxied = request("127.0.0.1", PROXIED, trusted="127.0.0.1")
        proxied.requestHeaders.setRawHeaders(b"host", [b"127.0.0.1:8080"])
        chat().checkOrigin(proxied)

    def test_originFromUntrustedPeer(self) -> None:
        """From a peer that is not trusted the forwarded host means nothing: 403."""
        spoofed = request("203.0.113.7", PROXIED)
        e = self.assertRaises(HTTPError, chat().checkOrigin, spoofed)
        self.assertEqual(e.status, 403)

    def test_secureCookieBehindTLSProxy(self) -> None:
        """The session cookie is Secure when a trusted proxy says the browser used HTTPS, and
        not when an untrusted peer says so."""
        self.assertIn("; Secure", signIn(request("127.0.0.1", PROXIED, trusted="127.0.0.1")))
        self.assertNotIn("Secure", signIn(request("203.0.113.7", {"x-forwarded-proto": ["https"]})))
        self.assertIn("; Secure", signIn(request("203.0.113.7", secure=True)))


class AccessLogTests(SynchronousTestCase):
    def test_forwardedClientLogged(self) -> None:
        """The access log names the client a trusted proxy forwarded, not the proxy; from an
        untrusted peer it names the peer, whatever the headers say."""
        proxied = request("127.0.0.2", PROXIED, trusted="127.0.0.2")
        spoofed = request("203.0.113.7", PROXIED)
        for r in (proxied, spoofed):
            r.method, r.uri, r.clientproto, r.code = b"GET", b"/", b"HTTP/1.1", 200
            r.site = r.channel.site  # type: ignore[attr-defined]  # request() gave it a site
        self.assertTrue(accessLogLine("[t]", proxied).startswith('"198.51.100.9" - - [t] "GET /'))
        self.assertTrue(accessLogLine("[t]", spoofed).startswith('"203.0.113.7" - - [t] "GET /'))
