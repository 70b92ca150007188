"""
The C{--redis} value: parsed into a Twisted client endpoint string plus AUTH/SELECT, and shown
without its password. No txredisapi here, so C{tap.py} can check the option without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class RedisAddress:
    """Where Redis is: a Twisted client endpoint string plus what to send once connected."""

    endpoint: str
    display: str  # for logs and /healthz: never holds the password
    dbid: int | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def redacted(value: str) -> str:
    """C{value} (a --redis value) with the password of a URL shown as C{***}, for messages."""
    if "://" not in value:
        return value
    scheme, rest = value.split("://", 1)
    # The authority ends at the first "/", "?" or "#"; the password is between its first ":"
    # and its last "@" (a password may hold "@" and ":").
    end = len(rest)
    for mark in "/?#":
        i = rest.find(mark)
        if i != -1:
            end = min(end, i)
    authority, tail = rest[:end], rest[end:]
    if "@" not in authority:
        if "@" not in rest:
            return value
        # Most likely a password with an unencoded "/", "?" or "#": hide up to the last "@".
        authority, tail = rest, ""
    userinfo, host = authority.rsplit("@", 1)
    if ":" not in userinfo:
        return value
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}{tail}"


def parseRedisAddress(value: str) -> RedisAddress:
    """
    Parse C{redis://[user:password@]host[:port][/db]}, C{rediss://...} (TLS), C{unix:///path}
    or a Twisted client endpoint string (C{tcp:127.0.0.1:6379}, C{unix:/run/redis.sock}).

    @raise ValueError: with a sentence for the user (without the password).
    """
    value = value.strip()
    if not value:
        raise ValueError("The Redis address is empty.")
    if "://" not in value:
        kind = value.split(":", 1)[0]
        if kind not in ("tcp", "unix", "tls", "ssl", "tcp6", "host"):
            raise ValueError(
                f"{value!r} is neither a redis:// URL nor a Twisted client endpoint "
                "such as tcp:127.0.0.1:6379."
            )
        if kind in ("tcp", "tls", "ssl") and len(value.split(":")) < 3 and "port=" not in value:
            raise ValueError(f"{value!r} needs a host and a port, e.g. tcp:127.0.0.1:6379.")
        return RedisAddress(endpoint=value, display=f"redis {value}")
    url = urlsplit(value)
    password = unquote(url.password) if url.password else None
    username = unquote(url.username) if url.username and password else None

    def problem(what: str) -> ValueError:
        return ValueError(f"The Redis URL {redacted(value)!r} {what}.")

    if url.scheme == "unix":
        if not url.path:
            raise problem("has no socket path (unix:///run/redis.sock)")
        return RedisAddress(f"unix:{url.path}", f"unix://{url.path}", None, username, password)
    if url.scheme not in ("redis", "rediss"):
        raise problem("must start with redis://, rediss:// or unix://")
    try:
        port = url.port or 6379
    except ValueError:
        raise problem("has a port that is not a number") from None
    host = url.hostname
    if not host:
        raise problem("has no host")
    dbid = None
    path = url.path.strip("/")
    if path:
        if not path.isdigit():
            raise problem("names a database that is not a number (redis://host:6379/0)")
        dbid = int(path)
    hostPart = host.replace(":", "\\:")
    if url.scheme == "rediss":
        endpoint = f"tls:{hostPart}:{port}"
    else:
        endpoint = f"tcp:{hostPart}:{port}"
    display = f"{url.scheme}://{host}:{port}" + (f"/{dbid}" if dbid is not None else "")
    return RedisAddress(endpoint, display, dbid, username, password)
