"""
One connection to Redis, kept up: L{Link} connects, lets txredisapi send AUTH and SELECT, runs the
broker's preparation (CLIENT SETNAME, SCRIPT LOAD, SUBSCRIBE...) and then hands the connection
over. When an attempt fails or a connection is lost it waits and tries again, backing off
exponentially (L{retryDelay}: 0.5 s doubling to 30 s, less up to a fifth at random so a fleet of
processes does not reconnect in step) and logging one line per failed attempt with the address
(never the password) and the cause: a wrong password gives a handful of lines a minute.

A connection is made with a deadline: the TCP connect, AUTH/SELECT and the preparation together
must be done within L{CONNECT_TIMEOUT} (a Redis that accepts but never answers is retried).

Twisted's ClientService would keep the connection up too, but it counts a connection as a success
as soon as TCP connects (so a refused password never backs off) and logs a line of its own per
retry; this class resets its back-off only once a connection is ready.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import txredisapi
from twisted.internet.defer import CancelledError, Deferred, FirstError, TimeoutError
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from pushsvc.waiters import Waiters

log = Logger()

RETRY_INITIAL = 0.5  # seconds before the first retry
RETRY_MAX = 30.0  # retries at most this far apart
RETRY_JITTER = 0.2  # each delay is shortened by up to this fraction of it, at random
CONNECT_TIMEOUT = 5.0  # TCP connect + AUTH/SELECT + preparation


def retryDelay(
    attempt: int, initial: float = RETRY_INITIAL, maximum: float = RETRY_MAX, jitter: float = 0.0
) -> float:
    """
    Seconds to wait after the C{attempt}th failed attempt in a row (1, 2, ...): C{initial}
    doubling up to C{maximum}, shortened by C{RETRY_JITTER * jitter} of it (C{jitter} in [0, 1)).
    """
    delay = min(maximum, initial * 2.0 ** min(max(attempt, 1) - 1, 62))
    return delay * (1.0 - RETRY_JITTER * jitter)


def reason(f: Failure) -> str:
    """The first line of a failure's message (of the first failure of a gathered list)."""
    if isinstance(f.value, FirstError):
        f = f.value.subFailure
    message = f.getErrorMessage().strip()
    return message.splitlines()[0] if message else f.type.__name__  # type: ignore[union-attr]  # a Failure whose type is set


def describe(error: str) -> str:
    """A txredisapi error (AUTH, SELECT, a command) as the cause a person reads in the log."""
    if "WRONGPASS" in error or "invalid password" in error:
        return "refused the password (WRONGPASS)"
    if "NOAUTH" in error:
        return "wants a password (NOAUTH)"
    if "could not set dbid" in error:
        return "refused the database number (SELECT failed)"
    return f"failed: {error}"


class _Tracked:
    """Tells the factory when the connection is gone (mixed into both txredisapi protocols)."""

    factory: RedisFactory

    def connectionLost(self, why: Failure) -> None:
        try:
            super().connectionLost(why)  # type: ignore[misc]  # txredisapi is untyped
        finally:
            self.factory.lost(self, why)


class Commands(_Tracked, txredisapi.RedisProtocol):  # type: ignore[misc]  # txredisapi: no types
    pass


class Subscriber(_Tracked, txredisapi.SubscriberProtocol):  # type: ignore[misc]  # no types
    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        self.factory.onMessage(message)


class RedisFactory(Factory):
    """Builds txredisapi protocols with the address's credentials; reports lost connections."""

    noisy = False
    isLazy = False  # txredisapi: do not log.msg a failed AUTH/SELECT (the link logs the cause)

    def __init__(
        self,
        protocolClass: type,
        password: str | None,
        dbid: int | None,
        username: str | None,
        onMessage: Callable[[Any], None] | None = None,
    ) -> None:
        self.protocolClass = protocolClass
        self._credentials = (password, dbid, username)
        self.onMessage = onMessage or (lambda message: None)
        self.lost: Callable[[Any, Failure], None] = lambda conn, why: None
        self.error: str | None = None  # why txredisapi gave up on the current connection

    def buildProtocol(self, addr: Any) -> Any:
        password, dbid, username = self._credentials
        # No replyTimeout: the broker times commands out itself, on its clock, without
        # dropping a connection that is merely slow.
        p = self.protocolClass(
            charset="utf-8",
            replyTimeout=None,
            password=password,
            dbid=dbid,
            convertNumbers=False,
            username=username,
        )
        p.factory = self
        return p

    # txredisapi calls these when AUTH or SELECT fails (then it closes the connection).
    def stopTrying(self) -> None:
        pass

    def connectionError(self, why: str) -> None:
        self.error = why


class Link:
    """
    Keeps one connection to Redis up. C{prepare(conn)} returns a Deferred that fires once the
    connection is ready for use (or fails: the connection is dropped and retried);
    C{onReady(conn)} and C{onLost(conn, wasReady)} tell the owner; C{onProblem()} that
    L{problem} changed while no connection was up.
    """

    def __init__(
        self,
        role: str,
        where: str,
        endpoint: IStreamClientEndpoint,
        factory: RedisFactory,
        clock: Any,
        prepare: Callable[[Any], Deferred[Any]],
        onReady: Callable[[Any], None],
        onLost: Callable[[Any, bool], None],
        onProblem: Callable[[], None],
        initialDelay: float = RETRY_INITIAL,
        maxDelay: float = RETRY_MAX,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.role = role
        self.where = where  # the address for log lines: never holds the password
        self.endpoint = endpoint
        self.factory = factory
        factory.lost = self._lost
        self.clock = clock
        self.prepare = prepare
        self.onReady = onReady
        self.onLost = onLost
        self.onProblem = onProblem
        self.initialDelay = min(initialDelay, maxDelay)
        self.maxDelay = maxDelay
        self.jitter = jitter
        self.conn: Any = None  # the connected protocol, ready or not
        self.ready = False
        self.everReady = False
        self.attempts = 0  # failed attempts since the last ready connection
        self.problem = "connecting"  # why there is no ready connection
        self._running = False
        self._attempt: Deferred[Any] | None = None
        self._retry: IDelayedCall | None = None
        self._deadline: IDelayedCall | None = None
        self._cause: str | None = None  # set just before this link drops a connection
        self._stopWaiters: Waiters[None] = Waiters()

    def start(self) -> None:
        """Connect (unless already connecting or connected) and keep connected until L{stop}."""
        self._running = True
        if self.conn is None and self._attempt is None and self._retry is None:
            self._connect()

    def stop(self) -> Deferred[None]:
        """Stop retrying and close the connection; fires with None once it is closed."""
        self._running = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._attempt is not None:
            self._attempt.cancel()
        d = self._stopWaiters.wait(done=self.conn is None)
        if self.conn is None:
            return d
        conn = self.conn
        conn.transport.loseConnection()
        # A half-open connection may never finish closing cleanly.
        abort = self.clock.callLater(CONNECT_TIMEOUT, conn.transport.abortConnection)
        return d.addBoth(lambda _: abort.cancel() if abort.active() else None)

    def drop(self, cause: str) -> None:
        """Abort the current connection because of C{cause} (logged); it is made again."""
        if self.conn is not None:
            self._cause = cause
            self.conn.transport.abortConnection()

    # -- one attempt ---------------------------------------------------------------------------

    def _connect(self) -> None:
        self._retry = None
        self.factory.error = None
        self._cause = None
        d: Deferred[Any] = self.endpoint.connect(self.factory)
        self._attempt = d
        d.addTimeout(CONNECT_TIMEOUT, self.clock)

        def settled(result: Any) -> Any:
            self._attempt = None
            return result

        d.addBoth(settled)
        d.addCallbacks(self._connected, self._connectFailed)

    def _connectFailed(self, f: Failure) -> None:
        if not self._running:
            return
        if f.check(TimeoutError):
            cause = f"did not accept a connection within {CONNECT_TIMEOUT:g} s"
        elif f.check(CancelledError):
            return
        elif f.check(ConnectionRefusedError) or "refused" in reason(f).lower():
            cause = "refused the connection"
        else:
            cause = f"could not be reached ({reason(f)})"
        self.problem = cause
        self.onProblem()
        self._retryLater(cause)

    def _connected(self, conn: Any) -> None:
        self.conn = conn
        if not self._running:
            conn.transport.loseConnection()
            return
        slow = f"did not answer within {CONNECT_TIMEOUT:g} s of connecting"
        self._deadline = self.clock.callLater(CONNECT_TIMEOUT, self.drop, slow)
        # whenConnected fires once AUTH and SELECT succeeded; when they fail txredisapi closes
        # the connection instead (and _lost tells why).
        d: Deferred[Any] = conn.whenConnected()
        d.addCallback(lambda _: self.prepare(conn))
        d.addCallbacks(
            self._prepared, self._prepareFailed, callbackArgs=(conn,), errbackArgs=(conn,)
        )

    def _prepared(self, _: object, conn: Any) -> None:
        if conn is not self.conn or not self._running:
            return
        self._cancelDeadline()
        self.ready = True
        if self.everReady:
            log.info(
                "reconnected to Redis {redis} ({role} connection)", redis=self.where, role=self.role
            )
        else:
            log.info(
                "connected to Redis {redis} ({role} connection)", redis=self.where, role=self.role
            )
        self.everReady = True
        self.attempts = 0
        self.onReady(conn)

    def _prepareFailed(self, f: Failure, conn: Any) -> None:
        if conn is self.conn:
            self.drop(describe(reason(f)))

    def _lost(self, conn: Any, why: Failure) -> None:
        if conn is not self.conn:
            return
        self.conn = None
        self._cancelDeadline()
        wasReady, self.ready = self.ready, False
        if self.factory.error:
            cause = describe(self.factory.error)
        elif self._cause:
            cause = self._cause
        else:
            cause = f"dropped the {self.role} connection ({reason(why)})"
        self.problem = cause
        self.onLost(conn, wasReady)
        if not self._running:
            self._stopWaiters.fire()
            return
        self._retryLater(cause)

    def _cancelDeadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _retryLater(self, cause: str) -> None:
        self.attempts += 1
        delay = retryDelay(self.attempts, self.initialDelay, self.maxDelay, self.jitter())
        log.warn(
            "Redis {redis} {cause}; {role} connection retrying in {delay:.1f} s",
            redis=self.where,
            cause=cause,
            role=self.role,
            delay=delay,
        )
        self._retry = self.clock.callLater(delay, self._connect)
