"""
The Redis broker: every publish goes through Redis pub/sub, so it reaches every pushsvc process.

Two connections to Redis, each kept up by its own L{ClientService} (reconnecting with a short
capped back-off): one for commands (PUBLISH, the cluster-state scripts of L{pushsvc.cluster}) and
one in subscriber mode. This process holds one Redis subscription per channel that has local
subscribers: C{SUBSCRIBE} with the first, C{UNSUBSCRIBE} with the last. Redis channel names are
C{{prefix}:{appId}:ch:{channel}}, so apps never see each other's events.

While either connection is down the broker is unhealthy: publishes fail with L{BrokerUnavailable}
(the HTTP API answers 503) and C{status} says why. Publishes accepted by other processes while this
one's subscriber connection is down never reach it, so the health listener (the hub) hears of every
loss of that connection and of every change to unhealthy: it closes the local WebSocket connections
(4200, reconnect and catch up) and refuses new ones until the broker is healthy again. When the
subscriber connection comes back every channel that still has local subscribers is subscribed again
before the broker reports itself healthy.

Cache channels: a publish with C{cache} sets C{{prefix}:{appId}:cache:{channel}} (the event frame,
expiring after L{CACHE_TTL}) and publishes, in one script, so the key holds the last event that
was accepted; L{RedisBroker.cached} reads it back for a subscribe on any process.

Each connection names itself (C{CLIENT SETNAME {name}:commands} / C{{name}:subscriber}) so it can
be told apart in C{CLIENT LIST}.

txredisapi's own connection functions also run on ClientService, but they hide it behind a pool;
driving ClientService directly gives the broker C{prepareConnection} (restore the subscriptions,
load the scripts before anything else is sent) and the failure reasons for C{/healthz}.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import txredisapi
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, fail, gatherResults, maybeDeferred, succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pushsvc.interfaces import CACHE_TTL, BrokerUnavailable, IBroker

log = Logger()

DEFAULT_PREFIX = "pushsvc"
REPLY_TIMEOUT = 5.0  # seconds; a Redis that stops answering is treated as gone
RETRY_INITIAL = 0.1
RETRY_MAX = 2.0  # reconnect attempts at most this far apart, so recovery is quick

# KEYS[1] the cache key; ARGV[1] Redis channel, [2] envelope, [3] event frame, [4] TTL in ms.
_PUBLISH_CACHED = """
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
return redis.call('PUBLISH', ARGV[1], ARGV[2])
"""
# KEYS[1] the cache key -> {frame or false, ms left}
_CACHED = """
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
"""


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


class _Tracked:
    """Tells the factory when the connection is gone (mixed into both txredisapi protocols)."""

    factory: _Factory

    def connectionLost(self, why: Failure) -> None:
        self.factory.protocols.discard(self)
        try:
            super().connectionLost(why)  # type: ignore[misc]
        finally:
            self.factory.lost(self, why)


class _Commands(_Tracked, txredisapi.RedisProtocol):
    pass


class _Subscriber(_Tracked, txredisapi.SubscriberProtocol):
    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        self.factory.onMessage(message)


class _Factory(Factory):
    """Builds txredisapi protocols with the address's credentials; reports lost connections."""

    noisy = False
    isLazy = True  # txredisapi: log a failed AUTH/SELECT instead of failing a pool Deferred

    def __init__(self, protocolClass: type, address: RedisAddress,
                 lost: Callable[[Any, Failure], None],
                 onMessage: Callable[[Any], None] | None = None) -> None:
        self.protocolClass = protocolClass
        self.address = address
        self.lost = lost
        self.onMessage = onMessage or (lambda message: None)
        self.error: str | None = None
        self.protocols: set[Any] = set()  # connected, not yet lost

    def buildProtocol(self, addr: Any) -> Any:
        a = self.address
        p = self.protocolClass(charset="utf-8", replyTimeout=REPLY_TIMEOUT, password=a.password,
                               dbid=a.dbid, convertNumbers=False, username=a.username)
        p.factory = self
        self.protocols.add(p)
        return p

    def closeAll(self) -> Deferred[Any]:
        """Close every connection of this factory; fires once all of them are gone."""
        waits = []
        for p in list(self.protocols):
            waits.append(p.whenDisconnected())
            p.transport.loseConnection()
        return gatherResults(waits, consumeErrors=True)

    # txredisapi calls these when AUTH or SELECT fails; ClientService keeps retrying.
    def stopTrying(self) -> None:
        pass

    def connectionError(self, why: str) -> None:
        self.error = why


@implementer(IStreamClientEndpoint)
class _RecordingEndpoint:
    """An endpoint that tells C{failed} why a connection attempt failed (for /healthz)."""

    def __init__(self, endpoint: Any, failed: Callable[[Failure], None],
                 refuse: Callable[[], bool]) -> None:
        self._endpoint = endpoint
        self._failed = failed
        self._refuse = refuse

    def connect(self, factory: Any) -> Deferred[Any]:
        if self._refuse():
            return fail(ConnectionRefusedError("the broker is stopping"))
        d: Deferred[Any] = self._endpoint.connect(factory)

        def failed(f: Failure) -> Failure:
            self._failed(f)
            return f

        return d.addErrback(failed)


def _reason(f: Failure) -> str:
    message = f.getErrorMessage().strip()
    return message.splitlines()[0] if message else f.type.__name__  # type: ignore[union-attr]


@implementer(IBroker)
class RedisBroker:
    """
    An L{IBroker} on Redis pub/sub. C{command(...)} and C{script(...)} run commands on the
    command connection for the cluster state.
    """

    def __init__(self, address: RedisAddress, reactor: Any, prefix: str = DEFAULT_PREFIX,
                 retryMax: float = RETRY_MAX, name: str | None = None) -> None:
        self.address = address
        self.reactor = reactor
        self.prefix = prefix
        # CLIENT SETNAME takes no spaces; the name is for people reading CLIENT LIST.
        self.name = (name or f"pushsvc-{os.getpid()}").replace(" ", "_")
        self._receive: Callable[[bytes], None] | None = None
        self._healthListener: Callable[[bool], None] | None = None
        self._channels: dict[str, None] = {}  # Redis channels with local subscribers (ordered)
        self._commands: Any = None  # the ready command connection
        self._subscriber: Any = None  # the subscriber connection, once SUBSCRIBEs may be sent
        self._subscribed = False  # every channel of _channels restored after a reconnect
        self._problem = "connecting"
        self._wasHealthy = False
        self._scripts: dict[str, tuple[str, str]] = {}  # name -> (sha1, source)
        self._readyHooks: list[Callable[[], Any]] = []
        self._healthWaiters: list[Deferred[None]] = []
        self._stopping = False
        self.addScript("publishCached", _PUBLISH_CACHED)
        self.addScript("cached", _CACHED)
        policy = backoffPolicy(initialDelay=RETRY_INITIAL, maxDelay=retryMax, factor=2.0,
                               jitter=lambda: random.random() * RETRY_INITIAL)
        endpoint = clientFromString(reactor, address.endpoint)
        self._factories = (_Factory(_Commands, address, self._lost),
                           _Factory(_Subscriber, address, self._lost, self._message))
        self._commandService = ClientService(
            _RecordingEndpoint(endpoint, self._connectFailed, self._refuse), self._factories[0],
            retryPolicy=policy, clock=reactor, prepareConnection=self._prepareCommands)
        self._subscriberService = ClientService(
            _RecordingEndpoint(endpoint, self._connectFailed, self._refuse), self._factories[1],
            retryPolicy=policy, clock=reactor, prepareConnection=self._prepareSubscriber)

    # -- IBroker ------------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self._commands is not None and self._subscribed

    @property
    def status(self) -> str:
        """'ok', or a sentence saying why publishes cannot be carried now."""
        if self.healthy:
            return "ok"
        return f"{self.address.display} unreachable: {self._problem}"

    def setReceiver(self, receive: Callable[[bytes], None]) -> None:
        self._receive = receive

    def setHealthListener(self, listener: Callable[[bool], None]) -> None:
        """
        C{listener(False)} whenever the subscriber connection is lost or the broker becomes
        unhealthy (not while stopping), C{listener(True)} when it is healthy again.
        """
        self._healthListener = listener

    def whenHealthy(self) -> Deferred[None]:
        """Fires with None once both connections are up and every subscription is restored."""
        if self.healthy:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._healthWaiters.append(d)
        return d

    def start(self) -> Deferred[None]:
        """Start connecting (and reconnecting for as long as it runs); fires with None at once."""
        self._commandService.startService()
        self._subscriberService.startService()
        return succeed(None)

    def stop(self) -> Deferred[None]:
        """Close both connections and stop reconnecting. Fires with None once they are closed."""
        # Close the connections first: ClientService (Twisted 26.10) does not expect a
        # connection it is still preparing to be lost after stopService.
        self._stopping = True
        d = gatherResults([factory.closeAll() for factory in self._factories],
                          consumeErrors=True)
        d.addBoth(lambda _: gatherResults([self._commandService.stopService(),
                                           self._subscriberService.stopService()],
                                          consumeErrors=True))
        # txredisapi hands bytes that arrived with a reply to the next reactor turn.
        d.addBoth(lambda _: deferLater(self.reactor, 0, lambda: None))
        return d.addBoth(lambda _: None)

    def channelName(self, appId: str, channel: str) -> str:
        return f"{self.prefix}:{appId}:ch:{channel}"

    def cacheKey(self, appId: str, channel: str) -> str:
        return f"{self.prefix}:{appId}:cache:{channel}"

    def publish(self, appId: str, channel: str, message: bytes,
                cache: bytes | None = None) -> Deferred[None]:
        """
        Fires with None once Redis took it (and kept C{cache} as the channel's last event);
        fails with L{BrokerUnavailable}.
        """
        if not self.healthy:
            return fail(BrokerUnavailable(self.status))
        name = self.channelName(appId, channel)
        if cache is None:
            d = self.command("PUBLISH", name, message)
        else:
            d = self.script("publishCached", [self.cacheKey(appId, channel)],
                            [name, message, cache, int(CACHE_TTL * 1000)])
        return d.addCallback(lambda _: None)

    def cached(self, appId: str, channel: str) -> Deferred[tuple[bytes, float] | None]:
        """
        Fires with (event frame, seconds it has left) of the last event published on cache
        channel C{channel}, or None; fails with L{BrokerUnavailable}.
        """
        def got(reply: Any) -> tuple[bytes, float] | None:
            frame, left = reply
            if not frame:
                return None
            if isinstance(frame, str):
                frame = frame.encode("utf-8")
            return frame, max(0.0, int(left) / 1000.0)

        return self.script("cached", [self.cacheKey(appId, channel)], []).addCallback(got)

    def claim(self, appId: str, key: str, ttl: float) -> Deferred[bool]:
        """
        C{SET {prefix}:{appId}:claim:{key} 1 NX PX ttl} on the command connection: fires with
        True for the first claim of C{key} within C{ttl} seconds on any node, else False; fails
        with L{BrokerUnavailable} while Redis is away.
        """
        name = f"{self.prefix}:{appId}:claim:{key}"
        d = self.command("SET", name, "1", "NX", "PX", max(1, int(ttl * 1000)))
        return d.addCallback(lambda reply: reply is not None)

    def subscribe(self, appId: str, channel: str) -> Deferred[None]:
        """
        Fires with None once Redis confirmed the subscription (at once while Redis is away: the
        subscription is made when it is back).
        """
        name = self.channelName(appId, channel)
        self._channels[name] = None
        return self._send(name, "subscribe")

    def unsubscribe(self, appId: str, channel: str) -> Deferred[None]:
        name = self.channelName(appId, channel)
        self._channels.pop(name, None)
        return self._send(name, "unsubscribe")

    def _send(self, name: str, what: str) -> Deferred[None]:
        conn = self._subscriber
        if conn is None:
            return succeed(None)
        try:
            d: Deferred[Any] = getattr(conn, what)(name)
        except Exception as e:
            d = fail(e)

        def failed(f: Failure) -> None:
            # The connection went away; the reconnect restores every subscription still wanted.
            log.warn("redis {what} {name} failed: {error}", what=what, name=name,
                     error=_reason(f))

        return d.addCallbacks(lambda _: None, failed)

    # -- commands for the cluster state --------------------------------------------------------

    def command(self, *args: Any) -> Deferred[Any]:
        """Run one command; fails with L{BrokerUnavailable} when Redis is not reachable."""
        conn = self._commands
        if conn is None:
            return fail(BrokerUnavailable(self.status))
        try:
            d: Deferred[Any] = conn.execute_command(*args)
        except Exception as e:
            return fail(BrokerUnavailable(f"{self.address.display}: {e}"))

        def failed(f: Failure) -> Failure:
            if f.check(txredisapi.ConnectionError):
                raise BrokerUnavailable(f"{self.address.display}: {_reason(f)}")
            return f

        return d.addErrback(failed)

    def addScript(self, name: str, source: str) -> None:
        """Register a Lua script (loaded on every connection) for L{script}."""
        import hashlib

        self._scripts[name] = (hashlib.sha1(source.encode()).hexdigest(), source)

    def script(self, name: str, keys: Iterable[str], args: Iterable[Any]) -> Deferred[Any]:
        """C{EVALSHA} the script C{name}; fails with L{BrokerUnavailable} while Redis is away."""
        sha, source = self._scripts[name]
        keys = list(keys)

        def noScript(f: Failure) -> Deferred[Any] | Failure:
            if f.check(txredisapi.ResponseError) and "NOSCRIPT" in str(f.value):
                return self.command("EVAL", source, len(keys), *keys, *args)
            return f

        d = self.command("EVALSHA", sha, len(keys), *keys, *args)
        return d.addErrback(noScript)

    def whenReady(self, hook: Callable[[], Any]) -> None:
        """Call C{hook()} every time the command connection is (re)established and ready."""
        self._readyHooks.append(hook)

    # -- connections ---------------------------------------------------------------------------

    def _refuse(self) -> bool:
        return self._stopping

    def _connectFailed(self, f: Failure) -> None:
        self._problem = _reason(f)
        self._reportHealth()

    def _lost(self, conn: Any, why: Failure) -> None:
        lostSubscriber = False
        if conn is self._commands:
            self._commands = None
        if conn is self._subscriber:
            self._subscriber = None
            self._subscribed = False
            lostSubscriber = True
        if conn.factory.error:
            self._problem = conn.factory.error
        else:
            self._problem = f"connection lost ({_reason(why)})"
        self._reportHealth(lostSubscriber)

    def _name(self, conn: Any, role: str) -> Deferred[None]:
        """C{CLIENT SETNAME}; a Redis that refuses it (ACLs) is used all the same."""
        def failed(f: Failure) -> None:
            log.warn("redis CLIENT SETNAME failed: {error}", error=_reason(f))

        d: Deferred[Any] = maybeDeferred(conn.execute_command, "CLIENT", "SETNAME",
                                         f"{self.name}:{role}")
        return d.addCallbacks(lambda _: None, failed)

    def _prepare(self, proxy: Any, ready: Callable[[Any], Deferred[Any]]) -> Deferred[None]:
        """
        Run C{ready(connection)} once AUTH/SELECT are done. The Deferred handed to ClientService
        never fails and fires at the latest when the connection is lost: ClientService (Twisted
        26.10) breaks when a connection it is preparing is lost after a failed preparation.
        """
        result: Deferred[None] = Deferred()

        def finish(_: object) -> None:
            if not result.called:
                result.callback(None)

        def connected(conn: Any) -> None:
            d = maybeDeferred(ready, conn)
            d.addErrback(lambda f: log.warn("preparing the redis connection failed: {error}",
                                            error=_reason(f)))
            d.addBoth(finish)

        proxy.whenDisconnected().addCallback(finish)
        proxy.whenConnected().addCallback(connected)
        return result

    def _prepareCommands(self, proxy: Any) -> Deferred[None]:
        def ready(conn: Any) -> Deferred[None]:
            loads = [self._name(conn, "commands")]
            loads += [conn.execute_command("SCRIPT", "LOAD", source)
                      for _, source in self._scripts.values()]
            d: Deferred[Any] = gatherResults(loads, consumeErrors=True)
            return d.addCallback(done, conn)

        def done(_: object, conn: Any) -> None:
            if conn not in self._factories[0].protocols:
                return  # lost meanwhile
            # Ready (and healthy) only once every reply of the preparation came back.
            self._commands = conn
            self._reportHealth()
            for hook in self._readyHooks:
                try:
                    hook()
                except Exception:
                    log.failure("redis ready hook")

        return self._prepare(proxy, ready)

    def _prepareSubscriber(self, proxy: Any) -> Deferred[None]:
        def ready(conn: Any) -> Deferred[None]:
            return self._name(conn, "subscriber").addCallback(named, conn)

        def named(_: object, conn: Any) -> Deferred[None] | None:
            if conn not in self._factories[1].protocols:
                return None  # lost meanwhile
            # From here on subscribe() sends at once, so nothing added meanwhile is missed.
            self._subscriber = conn
            names = list(self._channels)
            d: Deferred[Any] = gatherResults([conn.subscribe(name) for name in names],
                                             consumeErrors=True)
            return d.addCallback(done, conn, len(names))

        def done(_: object, conn: Any, count: int) -> None:
            if self._subscriber is not conn:
                return
            self._subscribed = True
            if count:
                log.info("redis subscriptions restored: {n} channels", n=count)
            self._reportHealth()

        return self._prepare(proxy, ready)

    def _reportHealth(self, lostSubscriber: bool = False) -> None:
        if self.healthy:
            waiters, self._healthWaiters = self._healthWaiters, []
            for d in waiters:
                d.callback(None)
        changed = False
        if self.healthy and not self._wasHealthy:
            self._wasHealthy = changed = True
            log.info("broker ready: {redis}", redis=self.address.display)
        elif not self.healthy and self._wasHealthy:
            self._wasHealthy = False
            changed = True
            log.error("broker down: {status}", status=self.status)
        if (changed or lostSubscriber) and self._healthListener is not None \
                and not self._stopping:
            try:
                self._healthListener(self.healthy)
            except Exception:
                log.failure("broker health listener")

    def _message(self, message: Any) -> None:
        if self._receive is None:
            return
        if isinstance(message, str):
            message = message.encode("utf-8")
        try:
            self._receive(message)
        except Exception:
            log.failure("delivering a message from redis")
