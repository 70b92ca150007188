"""
The Redis broker: every publish goes through Redis pub/sub, so it reaches every pushsvc process.

Two connections to Redis, each kept up by its own L{pushsvc.redis.link.Link} (exponential back-off
from 0.5 s to 30 s, one log line per failed attempt with its cause): one for commands (PUBLISH,
the cluster-state scripts of L{pushsvc.redis.state}) and one in subscriber mode. This process
holds one
Redis subscription per channel that has local subscribers: C{SUBSCRIBE} with the first,
C{UNSUBSCRIBE} with the last. Redis channel names are C{{prefix}:{appId}:ch:{channel}}, so apps
never see each other's events.

The two connections fail differently, and only one of them can lose events:
  - the subscriber connection: publishes accepted by other processes while it is down never reach
    this one. The health listener (the hub) hears of every loss of it: it closes the local
    WebSocket connections (4200, reconnect and catch up) and refuses new ones until every channel
    that still has local subscribers is subscribed again.
  - the command connection: while it is down (or stalled, below) publishes fail with
    L{BrokerUnavailable} (the HTTP API answers 503) and C{status} says why, but nothing published
    elsewhere is missed, so the clients stay connected.
A stall (Redis busy, C{DEBUG SLEEP}, a half-open connection) is seen by a timeout of
L{COMMAND_TIMEOUT} on every command, on the reactor's clock, and by a PING every
L{PROBE_INTERVAL}: the broker is unhealthy from the first unanswered one until a PING is answered
again, and publishes fail fast meanwhile. A command connection stalled for L{STALL_ABORT} is
made again (clients stay). The subscriber connection is PINGed too: it is made again (closing the
clients, 4200) when it stays silent while the command connection answers, or for
L{SUBSCRIBER_SILENCE} (a stall that long: clients are closed once, and reconnect when Redis is
back).

Cache channels: a publish with C{cache} sets C{{prefix}:{appId}:cache:{channel}} (the event frame,
expiring after L{CACHE_TTL}) and publishes, in one script, so the key holds the last event that
was accepted; L{RedisBroker.cached} reads it back for a subscribe on any process.

Each connection names itself (C{CLIENT SETNAME {name}:commands} / C{{name}:subscriber}) so it can
be told apart in C{CLIENT LIST}.

txredisapi's own connection functions hide the connection behind a pool; driving the protocols
directly gives the broker its preparation step (restore the subscriptions, load the scripts
before anything else is sent) and the failure reasons for C{/healthz}.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable
from typing import Any

import txredisapi
from twisted.internet.defer import (
    Deferred,
    TimeoutError,
    fail,
    gatherResults,
    maybeDeferred,
    succeed,
)
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pushsvc.interfaces import CACHE_TTL, BrokerUnavailable, IBroker
from pushsvc.redis import luaSource
from pushsvc.redis.address import RedisAddress
from pushsvc.redis.link import RETRY_MAX, Commands, Link, RedisFactory, Subscriber, reason
from pushsvc.waiters import Waiters

log = Logger()

DEFAULT_PREFIX = "pushsvc"
COMMAND_TIMEOUT = 1.5  # seconds; a command not answered this long means Redis stalls (a
# publish then answers 503 within 2 s of being sent, its HTTP round trip included)
PROBE_INTERVAL = 0.5  # seconds between the PINGs of the liveness probe
# A PING of the probe unanswered this long marks a stall: with PINGs every PROBE_INTERVAL, an
# idle stall shows in health within PROBE_INTERVAL + PROBE_DEADLINE = 2 s.
PROBE_DEADLINE = 1.5
STALL_ABORT = 10.0  # seconds; a command connection stalled this long is made again
SUBSCRIBER_SILENCE = 30.0  # seconds; a subscriber connection silent this long is made again


@implementer(IBroker)
class RedisBroker:
    """
    An L{IBroker} on Redis pub/sub. C{command(...)} and C{script(...)} run commands on the
    command connection for the cluster state.
    """

    def __init__(
        self,
        address: RedisAddress,
        reactor: Any,
        prefix: str = DEFAULT_PREFIX,
        retryMax: float = RETRY_MAX,
        name: str | None = None,
        jitter: Callable[[], float] = random.random,
        endpoint: IStreamClientEndpoint | None = None,
    ) -> None:
        """
        C{retryMax}: the longest wait between reconnect attempts; C{jitter}: random numbers in
        [0, 1) that shorten each wait a little; C{endpoint}: connect there rather than to
        C{address.endpoint} (tests).
        """
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
        self._stalledSince: float | None = None  # when a command last went unanswered
        self._probing = False  # a PING of the liveness probe is waiting for its reply
        self._commandsAnswered: float | None = None  # when the last answered PING was sent
        self._subscriberPing: float | None = None  # when the unanswered subscriber PING was sent
        self._subscriberSuspect: float | None = None  # when it was found silent, Redis not
        self._probe = LoopingCall(self._sendProbe)
        self._probe.clock = reactor
        self._wasHealthy = False
        self._scripts: dict[str, tuple[str, str]] = {}  # name -> (sha1, source)
        self._readyHooks: list[Callable[[], Any]] = []
        self._healthWaiters: Waiters[None] = Waiters()
        self._stopping = False
        self.addScript("publishCached", luaSource("publishCached"))
        self.addScript("cached", luaSource("cached"))
        if endpoint is None:
            endpoint = clientFromString(reactor, address.endpoint)
        where = address.display.removeprefix("redis ")
        credentials = (address.password, address.dbid, address.username)
        self._commandLink = Link(
            "commands",
            where,
            endpoint,
            RedisFactory(Commands, *credentials),
            reactor,
            self._prepareCommands,
            self._commandsReady,
            self._commandsLost,
            self._reportHealth,
            maxDelay=retryMax,
            jitter=jitter,
        )
        self._subscriberLink = Link(
            "subscriber",
            where,
            endpoint,
            RedisFactory(Subscriber, *credentials, onMessage=self._message),
            reactor,
            self._prepareSubscriber,
            self._subscriberReady,
            self._subscriberLost,
            self._reportHealth,
            maxDelay=retryMax,
            jitter=jitter,
        )

    # -- IBroker ------------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """True while publishes can be carried: both connections up and answering."""
        return self._commands is not None and self._stalledSince is None and self._subscribed

    @property
    def linked(self) -> bool:
        """True while the subscriber connection carries every channel with local subscribers."""
        return self._subscribed

    @property
    def status(self) -> str:
        """'ok', or a sentence saying why publishes cannot be carried now."""
        if self.healthy:
            return "ok"
        display = self.address.display
        if self._commands is None:
            return f"{display} unreachable: {self._commandLink.problem}"
        if self._stalledSince is not None:
            return f"{display} not answering: no reply within {PROBE_DEADLINE:g} s"
        return f"{display} unreachable: {self._subscriberLink.problem}"

    def setReceiver(self, receive: Callable[[bytes], None]) -> None:
        self._receive = receive

    def setHealthListener(self, listener: Callable[[bool], None]) -> None:
        """
        C{listener(False)} whenever the subscriber connection is lost (events may have been
        missed; not while stopping), C{listener(True)} when it carries every channel again.
        The command connection coming and going (or stalling) only changes L{healthy}.
        """
        self._healthListener = listener

    def whenHealthy(self) -> Deferred[None]:
        """Fires with None once both connections are up and every subscription is restored."""
        return self._healthWaiters.wait(done=self.healthy)

    def start(self) -> Deferred[None]:
        """
        Start connecting (and reconnecting for as long as it runs); fires with None at once.
        The subscriber connection is made once the command connection first was, so a Redis
        that refuses the password is reported once per attempt, not twice.
        """
        self._commandLink.start()
        return succeed(None)

    def stop(self) -> Deferred[None]:
        """Close both connections and stop reconnecting. Fires with None once they are closed."""
        self._stopping = True
        if self._probe.running:
            self._probe.stop()
        d = gatherResults(
            [self._commandLink.stop(), self._subscriberLink.stop()], consumeErrors=True
        )
        # txredisapi hands bytes that arrived with a reply to the next reactor turn.
        d.addBoth(lambda _: deferLater(self.reactor, 0, lambda: None))
        return d.addBoth(lambda _: None)

    def channelName(self, appId: str, channel: str) -> str:
        return f"{self.prefix}:{appId}:ch:{channel}"

    def cacheKey(self, appId: str, channel: str) -> str:
        return f"{self.prefix}:{appId}:cache:{channel}"

    def publish(
        self, appId: str, channel: str, message: bytes, cache: bytes | None = None
    ) -> Deferred[None]:
        """
        Fires with None once Redis took it (and kept C{cache} as the channel's last event);
        fails with L{BrokerUnavailable}, within L{COMMAND_TIMEOUT} when Redis does not answer.
        """
        if not self.healthy:
            return fail(BrokerUnavailable(self.status))
        name = self.channelName(appId, channel)
        if cache is None:
            d = self.command("PUBLISH", name, message)
        else:
            d = self.script(
                "publishCached",
                [self.cacheKey(appId, channel)],
                [name, message, cache, int(CACHE_TTL * 1000)],
            )
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
            log.warn("redis {what} {name} failed: {error}", what=what, name=name, error=reason(f))

        return d.addCallbacks(lambda _: None, failed)

    # -- commands for the cluster state --------------------------------------------------------

    def command(self, *args: Any) -> Deferred[Any]:
        """
        Run one command; fires with its reply, fails with L{BrokerUnavailable} when Redis is
        not reachable or has not answered within L{COMMAND_TIMEOUT} (on the reactor's clock).
        """
        conn = self._commands
        if conn is None:
            return fail(BrokerUnavailable(self.status))
        try:
            d: Deferred[Any] = conn.execute_command(*args)
        except Exception as e:
            return fail(BrokerUnavailable(f"{self.address.display}: {e}"))
        # Cancelling leaves txredisapi's reply queue in step: the late reply is dropped.
        d.addTimeout(COMMAND_TIMEOUT, self.reactor)

        def failed(f: Failure) -> Failure:
            if f.check(TimeoutError):
                self._stalled()
                raise BrokerUnavailable(self.status)
            if f.check(txredisapi.ConnectionError):
                raise BrokerUnavailable(f"{self.address.display}: {reason(f)}")
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

    # -- stalls --------------------------------------------------------------------------------

    def _sendProbe(self) -> None:
        """Every L{PROBE_INTERVAL}: PING on both connections (unless the last is unanswered)."""
        self._probeCommands()
        self._probeSubscriber()

    def _probeCommands(self) -> None:
        conn = self._commands
        if conn is None:
            return
        if self._probing:
            since = self._stalledSince
            if since is not None and self.reactor.seconds() - since >= STALL_ABORT:
                # Perhaps a half-open connection: make it again (clients stay connected).
                self._commandLink.drop(f"did not answer for {STALL_ABORT:g} s")
            return
        self._probing = True
        sent = self.reactor.seconds()
        deadline = self.reactor.callLater(PROBE_DEADLINE, self._stalled)

        def answered(result: Any) -> None:
            self._probing = False
            if deadline.active():
                deadline.cancel()
            if conn is self._commands and not isinstance(result, Failure):
                self._commandsAnswered = sent
                self._answering()

        try:
            d: Deferred[Any] = conn.execute_command("PING")
        except Exception as e:
            d = fail(e)
        d.addBoth(answered)

    def _probeSubscriber(self) -> None:
        """
        A subscriber connection whose PING goes unanswered while the command connection
        answers one sent later is broken (half-open, or its replies stuck): it is made again,
        which closes the clients (4200) as any loss of it does. When both are silent Redis
        itself stalls and nothing is published meanwhile, so the link is only given up after
        L{SUBSCRIBER_SILENCE}.
        """
        conn = self._subscriber if self._subscribed else None
        if conn is None:
            return
        now = self.reactor.seconds()
        sent = self._subscriberPing
        if sent is None:
            self._subscriberPing = now

            def answered(_: object) -> None:
                if conn is self._subscriber:
                    self._subscriberPing = self._subscriberSuspect = None

            try:
                d: Deferred[Any] = conn.execute_command("PING")
            except Exception as e:
                d = fail(e)
            d.addBoth(answered)
            return
        silent = now - sent
        commandsAlive = self._commandsAnswered is not None and self._commandsAnswered > sent
        if silent >= COMMAND_TIMEOUT and commandsAlive and self._subscriberSuspect is None:
            # Replies that Redis sent together after a stall may still be on their way here:
            # look again at the next tick.
            self._subscriberSuspect = now
            return
        suspect = self._subscriberSuspect
        if silent >= SUBSCRIBER_SILENCE or (
            suspect is not None and now - suspect >= PROBE_INTERVAL
        ):
            self._subscriberLink.drop(
                f"did not answer on the subscriber connection for {silent:.0f} s"
            )

    def _stalled(self) -> None:
        if self._stalledSince is None and self._commands is not None:
            self._stalledSince = self.reactor.seconds()
            self._reportHealth()

    def _answering(self) -> None:
        if self._stalledSince is not None:
            took = self.reactor.seconds() - self._stalledSince + COMMAND_TIMEOUT
            self._stalledSince = None
            log.info(
                "Redis {redis} answers again after about {took:.1f} s",
                redis=self.address.display,
                took=took,
            )
            self._reportHealth()

    # -- connections ---------------------------------------------------------------------------

    def _name(self, conn: Any, role: str) -> Deferred[None]:
        """C{CLIENT SETNAME}; a Redis that refuses it (ACLs) is used all the same."""

        def failed(f: Failure) -> None:
            if "NOAUTH" in reason(f):
                f.raiseException()
            log.warn("redis CLIENT SETNAME failed: {error}", error=reason(f))

        d: Deferred[Any] = maybeDeferred(
            conn.execute_command, "CLIENT", "SETNAME", f"{self.name}:{role}"
        )
        return d.addCallbacks(lambda _: None, failed)

    def _prepareCommands(self, conn: Any) -> Deferred[None]:
        """Fires with None once the connection is named and every script is loaded."""
        loads = [self._name(conn, "commands")]
        loads += [
            conn.execute_command("SCRIPT", "LOAD", source) for _, source in self._scripts.values()
        ]
        return gatherResults(loads, consumeErrors=True).addCallback(lambda _: None)

    def _commandsReady(self, conn: Any) -> None:
        self._commands = conn
        self._stalledSince = None
        self._probing = False
        if not self._probe.running:
            self._probe.start(PROBE_INTERVAL, now=False)
        self._reportHealth()
        for hook in self._readyHooks:
            try:
                hook()
            except Exception:
                log.failure("redis ready hook")
        self._subscriberLink.start()

    def _commandsLost(self, conn: Any, wasReady: bool) -> None:
        # Publishes fail (503) until it is back; nothing was missed, so clients stay.
        if conn is self._commands:
            self._commands = None
            self._stalledSince = None
        self._reportHealth()

    def _prepareSubscriber(self, conn: Any) -> Deferred[None]:
        """Fires with None once the connection is named and subscribed to every channel."""

        def named(_: object) -> Deferred[None]:
            # From here on subscribe() sends at once, so nothing added meanwhile is missed.
            self._subscriber = conn
            names = list(self._channels)
            d: Deferred[Any] = gatherResults(
                [conn.subscribe(name) for name in names], consumeErrors=True
            )
            return d.addCallback(done, len(names))

        def done(_: object, count: int) -> None:
            if count:
                log.info("redis subscriptions restored: {n} channels", n=count)

        return self._name(conn, "subscriber").addCallback(named)

    def _subscriberReady(self, conn: Any) -> None:
        self._subscribed = True
        self._reportHealth(linkChanged=True)

    def _subscriberLost(self, conn: Any, wasReady: bool) -> None:
        if conn is not self._subscriber:
            return  # lost before it subscribed anything: nothing to report
        self._subscriber = None
        self._subscriberPing = self._subscriberSuspect = None
        self._subscribed = False
        self._reportHealth(linkChanged=True)

    def _reportHealth(self, linkChanged: bool = False) -> None:
        """Wake the waiters, log a change of health, and tell the listener of the link."""
        if self.healthy:
            self._healthWaiters.fire()
        if self.healthy and not self._wasHealthy:
            self._wasHealthy = True
            log.info("broker ready: {redis}", redis=self.address.display)
        elif not self.healthy and self._wasHealthy:
            self._wasHealthy = False
            if not self._stopping:
                log.error("broker down: {status}", status=self.status)
        if linkChanged and self._healthListener is not None and not self._stopping:
            try:
                self._healthListener(self._subscribed)
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
