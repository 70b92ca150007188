"""
Who the client is behind reverse proxies: forwarding headers count only from trusted peers.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from pushsvc.http.proxy import Client, TrustedProxies, clientOf, parseAddress, peerAddress
from pushsvc.http.site import PushSite


def request(
    peer: str | None,
    headers: dict[str, list[str]] | None = None,
    trusted: str = "",
    secure: bool = False,
) -> Request:
    """A request from C{peer} (None: a UNIX socket) to a site trusting C{trusted}."""
    address = (
        UNIXAddress(b"/run/p.sock")
        if peer is None
        else IPv6Address("TCP", peer, 5000)
        if ":" in peer
        else IPv4Address("TCP", peer, 5000)
    )
    channel = DummyChannel(address)
    if secure:
        channel.transport = DummyChannel.SSL(address)
    site = PushSite(Resource())
    if trusted:
        site.trustedProxies = TrustedProxies.parse(trusted)
    channel.site = site
    r = Request(channel)
    r.requestHeaders.setRawHeaders(b"host", [b"push.example.com"])
    for name, values in (headers or {}).items():
        r.requestHeaders.setRawHeaders(name.encode(), [v.encode() for v in values])
    return r


class UntrustedPeerTests(SynchronousTestCase):
    """A peer not in --trusted-proxies is the client, whatever its headers claim."""

    def test_plainPeer(self) -> None:
        self.assertEqual(
            clientOf(request("203.0.113.7")), Client("203.0.113.7", "http", "push.example.com")
        )

    def test_spoofedHeadersIgnored(self) -> None:
        """X-Forwarded-*, Forwarded: all ignored from a peer that is not trusted."""
        spoofed = {
            "x-forwarded-for": ["1.2.3.4"],
            "x-forwarded-proto": ["https"],
            "x-forwarded-host": ["evil.example"],
            "forwarded": ["for=5.6.7.8;proto=https;host=evil.example"],
        }
        self.assertEqual(
            clientOf(request("203.0.113.7", spoofed)),
            Client("203.0.113.7", "http", "push.example.com"),
        )
        # Trusting some other proxy changes nothing for this peer.
        self.assertEqual(
            clientOf(request("203.0.113.7", spoofed, trusted="10.0.0.0/8")),
            Client("203.0.113.7", "http", "push.example.com"),
        )

    def test_tlsPeer(self) -> None:
        self.assertEqual(clientOf(request("203.0.113.7", secure=True)).scheme, "https")

    def test_unixPeerNotTrustedByDefault(self) -> None:
        """A UNIX-socket peer has no address: "unix", trusted only when listed."""
        r = request(None, {"x-forwarded-for": ["1.2.3.4"]}, trusted="10.0.0.1")
        self.assertEqual(clientOf(r).address, "unix")
        r = request(None, {"x-forwarded-for": ["1.2.3.4"]}, trusted="unix")
        self.assertEqual(clientOf(r).address, "1.2.3.4")


class TrustedProxyTests(SynchronousTestCase):
    """From a trusted peer, the forwarding headers name the client."""

    def test_xForwardedFor(self) -> None:
        r = request(
            "10.0.0.2",
            {
                "x-forwarded-for": ["198.51.100.9"],
                "x-forwarded-proto": ["https"],
                "x-forwarded-host": ["chat.example.org"],
            },
            trusted="10.0.0.2",
        )
        self.assertEqual(clientOf(r), Client("198.51.100.9", "https", "chat.example.org"))

    def test_rightMostUntrusted(self) -> None:
        """
        The client may write anything left of what the proxies append: the right-most entry
        that is not a trusted proxy is the client, over repeated headers too.
        """
        r = request(
            "10.0.0.2",
            {"x-forwarded-for": ["6.6.6.6, 198.51.100.9", "10.0.0.3"]},
            trusted="10.0.0.0/24",
        )
        self.assertEqual(clientOf(r).address, "198.51.100.9")

    def test_everyHopTrusted(self) -> None:
        """When every entry is a trusted proxy, the left-most (first) of them is the client."""
        r = request("10.0.0.2", {"x-forwarded-for": ["10.0.0.5, 10.0.0.3"]}, trusted="10.0.0.0/24")
        self.assertEqual(clientOf(r).address, "10.0.0.5")

    def test_garbageEntry(self) -> None:
        """An entry that is not an address stops the walk: the hop right of it is the client."""
        r = request("10.0.0.2", {"x-forwarded-for": ["1.2.3.4, nonsense"]}, trusted="10.0.0.2")
        self.assertEqual(clientOf(r).address, "10.0.0.2")
        r = request("10.0.0.2", {"x-forwarded-for": ["nonsense, 10.0.0.3"]}, trusted="10.0.0.0/24")
        self.assertEqual(clientOf(r).address, "10.0.0.3")

    def test_portsAndIPv6(self) -> None:
        r = request("10.0.0.2", {"x-forwarded-for": ["[2001:db8::1]:4711"]}, trusted="10.0.0.2")
        self.assertEqual(clientOf(r).address, "2001:db8::1")
        r = request("10.0.0.2", {"x-forwarded-for": ["198.51.100.9:5555"]}, trusted="10.0.0.2")
        self.assertEqual(clientOf(r).address, "198.51.100.9")
        r = request("::1", {"x-forwarded-for": ["::ffff:198.51.100.9"]}, trusted="::1")
        self.assertEqual(clientOf(r).address, "198.51.100.9")

    def test_forwarded(self) -> None:
        """RFC 7239: the chosen element's for=, proto= and host= (quoted or not)."""
        r = request(
            "10.0.0.2",
            {
                "forwarded": [
                    "for=6.6.6.6;proto=http, "
                    'for="198.51.100.9:1234";proto=https;host="chat.example.org"',
                    "for=10.0.0.3;proto=http;host=inner.local",
                ]
            },
            trusted="10.0.0.0/24",
        )
        self.assertEqual(clientOf(r), Client("198.51.100.9", "https", "chat.example.org"))
        r = request(
            "10.0.0.2", {"forwarded": ['for="[2001:db8:cafe::17]:4711"']}, trusted="10.0.0.2"
        )
        self.assertEqual(clientOf(r).address, "2001:db8:cafe::17")

    def test_forwardedObfuscated(self) -> None:
        """for=unknown or an obfuscated name is no address: the proxy itself is the client."""
        r = request("10.0.0.2", {"forwarded": ["for=unknown;proto=https"]}, trusted="10.0.0.2")
        self.assertEqual(clientOf(r), Client("10.0.0.2", "http", "push.example.com"))

    def test_malformedForwardedIgnored(self) -> None:
        r = request("10.0.0.2", {"forwarded": ['for="1.2.3.4']}, trusted="10.0.0.2")
        self.assertEqual(clientOf(r).address, "10.0.0.2")

    def test_xForwardedForWinsOverForwarded(self) -> None:
        r = request(
            "10.0.0.2",
            {"x-forwarded-for": ["198.51.100.9"], "forwarded": ["for=5.6.7.8"]},
            trusted="10.0.0.2",
        )
        self.assertEqual(clientOf(r).address, "198.51.100.9")

    def test_badSchemeAndHostIgnored(self) -> None:
        """Only http/https and a well-formed host are taken; otherwise the request's own."""
        r = request(
            "10.0.0.2",
            {
                "x-forwarded-for": ["198.51.100.9"],
                "x-forwarded-proto": ["gopher"],
                "x-forwarded-host": ["evil.example/\r\nx"],
            },
            trusted="10.0.0.2",
        )
        self.assertEqual(clientOf(r), Client("198.51.100.9", "http", "push.example.com"))

    def test_noHeaders(self) -> None:
        """A trusted peer that forwards nothing is the client itself."""
        self.assertEqual(clientOf(request("10.0.0.2", trusted="10.0.0.2")).address, "10.0.0.2")


class ParsingTests(SynchronousTestCase):
    def test_trustedProxiesParse(self) -> None:
        proxies = TrustedProxies.parse(" 10.0.0.1, 192.168.0.0/16,::1,unix,")
        self.assertEqual(proxies.entries(), ("10.0.0.1", "::1", "192.168.0.0/16", "unix"))
        self.assertTrue(proxies.trusts("192.168.4.5"))
        self.assertTrue(proxies.trusts("10.0.0.1"))
        self.assertFalse(proxies.trusts("10.0.0.2"))
        self.assertFalse(TrustedProxies())
        with self.assertRaises(ValueError) as e:
            TrustedProxies.parse("10.0.0.1,example.com")
        self.assertIn("'example.com' is not an IP address or network", str(e.exception))

    def test_parseAddress(self) -> None:
        self.assertEqual(str(parseAddress("1.2.3.4:80")), "1.2.3.4")
        self.assertIsNone(parseAddress("_hidden"))
        self.assertIsNone(parseAddress("[::1"))

    def test_peerAddress(self) -> None:
        self.assertEqual(peerAddress(IPv4Address("TCP", "1.2.3.4", 1)), "1.2.3.4")
        self.assertEqual(peerAddress(IPv6Address("TCP", "::ffff:1.2.3.4", 1)), "1.2.3.4")
        self.assertEqual(peerAddress(None), "unix")
