"""
Who the client is when pushsvc runs behind reverse proxies.

The TCP peer is the client unless it is in C{--trusted-proxies}. Only then are the forwarding
headers read: the client address is the right-most address of C{X-Forwarded-For} that is not
itself a trusted proxy (each proxy appends the address it saw, so everything left of that entry
was written by the client and is not believed); without C{X-Forwarded-For}, the same walk over
the C{for=} parameters of C{Forwarded} (RFC 7239). The scheme comes from C{X-Forwarded-Proto}
(the right-most value: what the nearest proxy set) or the chosen C{Forwarded} element's
C{proto=}; the host from C{X-Forwarded-Host} or C{host=} alike. Headers from a peer that is not
trusted are ignored, whatever they say.

Other code asks one question, L{clientOf}; the site holds the trusted set
(C{PushSite.trustedProxies}).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

UNIX = "unix"  # in --trusted-proxies: trust peers on a UNIX socket (a local proxy)

_HOST = re.compile(
    r"\A(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
    r"(?::[0-9]{1,5})?\Z"
)
_SCHEMES = frozenset(("http", "https"))
# One RFC 7239 pair: token=token or token="quoted string".
_PAIR = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)\s*')

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Client:
    """One request's client: its address, C{"http"} or C{"https"}, and the host it asked for."""

    address: str
    scheme: str
    host: str | None


def parseAddress(text: str) -> IPAddress | None:
    """
    An IP address as written in a forwarding header (C{1.2.3.4}, C{1.2.3.4:80}, C{::1},
    C{[::1]:80}), IPv4-mapped IPv6 as IPv4; None when it is not one (C{unknown}, C{_hidden}).
    """
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """A set of proxy addresses and networks; empty (the default) trusts nobody."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.addresses: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.unix = False
        for entry in entries:
            entry = entry.strip()
            if not entry:
                continue
            if entry == UNIX:
                self.unix = True
                continue
            try:
                network = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or network (e.g. 10.0.0.1 or 10.0.0.0/8)"
                ) from None
            if network.num_addresses == 1:
                self.addresses.add(str(network.network_address))
            else:
                self.networks.append(network)

    @classmethod
    def parse(cls, text: str) -> TrustedProxies:
        """From C{--trusted-proxies}: comma-separated addresses, networks and C{unix}.

        @raise ValueError: naming the entry that is neither.
        """
        return cls(text.split(","))

    def __bool__(self) -> bool:
        return bool(self.addresses or self.networks or self.unix)

    def entries(self) -> tuple[str, ...]:
        """The normalised entries, for the configuration and the log."""
        unix = (UNIX,) if self.unix else ()
        return tuple(sorted(self.addresses)) + tuple(str(n) for n in self.networks) + unix

    def trusts(self, address: str) -> bool:
        """Whether the peer C{address} (as L{peerAddress} gives it) is a trusted proxy."""
        if address in self.addresses:
            return True
        if address == UNIX:
            return self.unix
        if not self.networks:
            return False
        ip = parseAddress(address)
        return ip is not None and any(ip in n for n in self.networks)

    def _trustsIP(self, ip: IPAddress) -> bool:
        return str(ip) in self.addresses or any(ip in n for n in self.networks)


NOBODY = TrustedProxies()


def peerAddress(addr: Any) -> str:
    """
    The address of a TCP peer as a string (IPv4-mapped IPv6 as IPv4); C{"unix"} for a UNIX
    socket peer, which has none.
    """
    host = getattr(addr, "host", None)
    if not isinstance(host, str):
        return UNIX
    if host.startswith("::ffff:"):
        ip = parseAddress(host)
        if ip is not None:
            return str(ip)
    return host


def _headerValues(request: Any, name: bytes) -> list[str]:
    """Every comma-separated value of header C{name}, across repeated headers, stripped."""
    raw = request.requestHeaders.getRawHeaders(name)
    if not raw:
        return []
    return [v.strip() for line in raw for v in line.decode("latin-1").split(",")]


def _forwardedElements(request: Any) -> list[dict[str, str]]:
    """The elements of C{Forwarded}, each a dict of its (lower-cased) parameters."""
    raw = request.requestHeaders.getRawHeaders(b"forwarded")
    elements: list[dict[str, str]] = []
    for line in raw or ():
        text = line.decode("latin-1")
        element: dict[str, str] = {}
        pos = 0
        while pos < len(text):
            match = _PAIR.match(text, pos)
            if match is None:
                return []  # malformed: believe none of it
            name, value = match.group(1).lower(), match.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            element.setdefault(name, value)
            pos = match.end()
            if pos < len(text) and text[pos] == ";":
                pos += 1
            elif pos < len(text) and text[pos] == ",":
                elements.append(element)
                element = {}
                pos += 1
            elif pos < len(text):
                return []
        elements.append(element)
    return elements


def _chosen(hops: list[str], trusted: TrustedProxies, peer: str) -> tuple[int, str]:
    """
    Walk C{hops} (left to right as in the header) from the right, past trusted proxies; the
    index of the client's entry and its address, or C{(-1, the last trusted hop)} when an entry
    is not an address (nothing left of it can be believed) or every entry is trusted.
    """
    last = peer
    for i in range(len(hops) - 1, -1, -1):
        ip = parseAddress(hops[i])
        if ip is None:
            return -1, last
        if not trusted._trustsIP(ip):
            return i, str(ip)
        last = str(ip)
    return -1, last


def _scheme(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    return value if value in _SCHEMES else None


def _host(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value if _HOST.match(value) else None


def _ownHost(request: Any) -> str | None:
    raw = request.requestHeaders.getRawHeaders(b"host")
    return _host(raw[0].decode("latin-1")) if raw else None


def clientOf(request: Any) -> Client:
    """
    The client of C{request}: its TCP peer, or, when that peer is one of the site's
    C{trustedProxies}, what the forwarding headers say (see the module docstring).
    """
    peer = peerAddress(request.getClientAddress())
    scheme = "https" if request.isSecure() else "http"
    site = getattr(request, "site", None) or getattr(request.channel, "site", None)
    trusted: TrustedProxies = getattr(site, "trustedProxies", NOBODY)
    if not trusted or not trusted.trusts(peer):
        return Client(peer, scheme, _ownHost(request))
    element: dict[str, str] = {}
    forwardedFor = _headerValues(request, b"x-forwarded-for")
    if forwardedFor:
        _, address = _chosen(forwardedFor, trusted, peer)
    else:
        elements = _forwardedElements(request)
        index, address = _chosen([e.get("for", "") for e in elements], trusted, peer)
        if index >= 0:
            element = elements[index]
    protos = _headerValues(request, b"x-forwarded-proto")
    hosts = _headerValues(request, b"x-forwarded-host")
    return Client(
        address,
        _scheme(protos[-1] if protos else element.get("proto")) or scheme,
        _host(hosts[-1] if hosts else element.get("host")) or _ownHost(request),
    )
