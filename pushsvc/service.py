"""
The one service that owns start-up and shut-down order.

Start: data directory and credentials -> store, broker, hub and resources -> open-file limit
raised, connection caps set -> listen (a bind
failure stops start-up with a one-line error) -> open and migrate the store, retrying while it is
unreachable (health says so meanwhile).

Stop: stop listening -> tell WebSocket clients to reconnect elsewhere (4200) -> withdraw this
process from the cluster state -> stop the broker -> close the store, so nothing acknowledged is
half-written.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from pushsvc.apps import SECRET_ENV, App, Apps, loadOrCreateApp, loadOrCreateKey
from pushsvc.chat import ChatAPI, makeChatResource
from pushsvc.filemodes import privateDirectory
from pushsvc.health import HealthResource, MetricsResource
from pushsvc.httpchannel import HTTPLimits
from pushsvc.interfaces import IBroker, PushSettings
from pushsvc.limits import AcceptGuard, ConnectionLimits, raiseOpenFileLimit
from pushsvc.proxy import TrustedProxies
from pushsvc.session import SessionSigner
from pushsvc.site import makeSite, webRoot
from pushsvc.store import IStore, storeFromURL

log = Logger()

SESSION_KEY_ENV = "PUSHSVC_SESSION_KEY"
STORE_RETRY_MAX = 30.0
DRAIN_TIMEOUT = 10.0  # seconds a stop waits for HTTP responses in progress


@dataclass(frozen=True)
class ServiceConfig:
    listen: tuple[str, ...]
    dataDir: Path
    storeURL: str | None = None
    redis: str | None = None  # --redis: a redis:// URL or a Twisted client endpoint
    appId: str | None = None
    appKey: str | None = None
    appSecretFile: Path | None = None
    sessionKeyFile: Path | None = None
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)
    maxDataBytes: int = 10240
    maxOutboundBytes: int = 1024 * 1024
    activityTimeout: int = 120
    allowedOrigins: tuple[str, ...] = ()
    logPublishes: bool = False  # access-log successful HTTP API publishes too
    chatMessagesPerMinute: int = 60  # per chat session, in bursts of up to 20
    maxConnections: int = 0  # 0: derived from the open-file limit (pushsvc.limits)
    maxConnectionsPerIp: int = 1000  # 0: no cap per client address
    trustedProxies: tuple[str, ...] = ()  # addresses/networks whose X-Forwarded-For is believed
    headerTimeout: float = 10.0  # --header-timeout: request line and headers within this
    bodyMinRate: int = 1024  # --body-min-rate: bytes/s a body must keep up, after the above
    idleTimeout: float = 60.0  # --idle-timeout: idle keep-alive, or replies not read


class PushService(MultiService):
    """Everything of one pushsvc process, in one reactor."""

    def __init__(self, config: ServiceConfig, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.ports: list[IListeningPort] = []
        self.acceptGuards: list[AcceptGuard] = []
        self.storeReady = False
        self.storeError = "opening"
        self.store: IStore | None = None
        self._stopping = False
        self._readyWaiters: list[Deferred[None]] = []

    # -- start-up ------------------------------------------------------------------------

    def _loadApp(self) -> tuple[App, bytes]:
        c = self.config
        for change in privateDirectory(c.dataDir):
            log.warn("{change}: the data directory is for this user only", change=change)
        app, generated = loadOrCreateApp(
            c.dataDir, c.appId, c.appKey, c.appSecretFile, c.environ, c.maxDataBytes
        )
        if c.appSecretFile is not None:
            where = str(c.appSecretFile)
        elif c.environ.get(SECRET_ENV):
            where = f"the {SECRET_ENV} environment variable"
        else:
            where = str((c.dataDir / "app-secret").resolve())
        log.info(
            "{how} app id {appId}, key {appKey}; secret in {where}",
            how="generated" if generated else "using",
            appId=app.id,
            appKey=app.key,
            where=where,
        )
        sessionKey = loadOrCreateKey(
            c.dataDir, "session-key", c.sessionKeyFile, c.environ.get(SESSION_KEY_ENV)
        )
        return app, sessionKey

    def _build(self) -> Any:
        from pushsvc.api import makeApiResource, makeUsersResource
        from pushsvc.hub import Hub, LocalBroker
        from pushsvc.protocol import makeAppResource
        from pushsvc.registry import Registry
        from pushsvc.webhook import NotifyResource

        c = self.config
        app, sessionKey = self._loadApp()
        self.apps = apps = Apps([app])
        self.store = storeFromURL(c.storeURL, c.dataDir, self.reactor)
        settings = PushSettings(
            activityTimeout=c.activityTimeout,
            maxOutboundBytes=c.maxOutboundBytes,
            allowedOrigins=c.allowedOrigins,
        )
        self.registry = Registry(settings, self.reactor)
        if c.redis is not None:
            from pushsvc.cluster import RedisState
            from pushsvc.redisbroker import RedisBroker, parseRedisAddress

            redis = RedisBroker(parseRedisAddress(c.redis), self.reactor)
            self.broker: IBroker = redis
            self.hub = Hub(self.registry, redis, self.reactor,
                           RedisState(redis, self.registry, self.reactor))
        else:
            self.broker = LocalBroker(self.reactor)
            self.hub = Hub(self.registry, self.broker, self.reactor)
        chat = ChatAPI(
            apps,
            self.store,
            self.hub,
            SessionSigner(sessionKey, self.reactor.seconds),
            self.reactor.seconds,
            lambda: self.storeReady,
            c.activityTimeout,
            messagesPerMinute=c.chatMessagesPerMinute,
        )
        self.pusherApi = makeApiResource(apps, self.hub, self.reactor.seconds)
        self.site = makeSite(
            webRoot(),
            makeChatResource(chat),
            self.pusherApi,
            makeUsersResource(apps, self.hub, self.reactor.seconds),
            NotifyResource(apps, self.hub, self.reactor.seconds),
            makeAppResource(apps, self.hub, self.registry, self.reactor, settings),
            HealthResource(self.healthChecks),
            MetricsResource(self.metrics),
            HTTPLimits(c.headerTimeout, c.bodyMinRate, c.idleTimeout),
            self.reactor,
        )
        self.site.logPublishes = c.logPublishes
        return self.site

    def _applyLimits(self, site: Any) -> None:
        """Raise the open-file limit; give the site its caps and trusted proxies (logged)."""
        c = self.config
        fileLimit = raiseOpenFileLimit()
        site.limits = limits = ConnectionLimits.fromFileLimit(
            c.maxConnections, c.maxConnectionsPerIp, fileLimit)
        site.trustedProxies = TrustedProxies(c.trustedProxies)
        log.info(
            "at most {max} connections ({how}), {perIp} per client address; "
            "trusted proxies: {proxies}",
            max=limits.maxConnections,
            how=("--max-connections" if c.maxConnections else
                 f"the open-file limit {fileLimit} less {fileLimit - limits.maxConnections} "
                 "kept for the store, Redis, logs and refusals" if fileLimit else "no limit"),
            perIp=c.maxConnectionsPerIp or "no cap",
            proxies=", ".join(site.trustedProxies.entries()) or "none",
        )

    def _describeConnections(self) -> str:
        limits = self.site.limits
        return f"{limits.open} connections open (cap {limits.maxConnections})"

    def startService(self) -> None:
        super().startService()
        site = self._build()
        self._applyLimits(site)
        for description in self.config.listen:
            endpoint = serverFromString(self.reactor, description)
            result: list[Any] = []
            endpoint.listen(site).addBoth(result.append)
            if not result or isinstance(result[0], Failure):
                reason = result[0].getErrorMessage() if result else "listening did not finish"
                for port in self.ports:
                    port.stopListening()
                message = f"pushsvc: cannot listen on {description}: {reason}"
                log.critical("{message}", message=message)
                # twistd has replaced sys.stderr with the log by now; the person who started it
                # should see one line on the real one, and exit status 1, not a traceback.
                if sys.__stderr__ is not None:
                    sys.__stderr__.write(message + "\n")
                    sys.__stderr__.flush()
                raise SystemExit(1)
            self.ports.append(result[0])
            guard = AcceptGuard.install(result[0], self.reactor, self._describeConnections)
            if guard is not None:
                self.acceptGuards.append(guard)
            log.info("listening on {description}", description=description)
        # The broker connects (and reconnects) in the background: the process serves what it
        # can while Redis is away, and health says so.
        d = self.broker.start()
        d.addCallback(lambda _: self.hub.state.start())
        d.addCallback(lambda _: self._openStore())

    def _openStore(self, delay: float = 0.5) -> Deferred[None]:
        assert self.store is not None
        store = self.store

        def opened(_: object) -> None:
            self.storeReady = True
            self.storeError = "ok"
            waiters, self._readyWaiters = self._readyWaiters, []
            for waiter in waiters:
                waiter.callback(None)
            log.info("message store ready: {store}", store=store.description)

        def failed(f: Failure) -> Deferred[None] | None:
            self.storeError = f"cannot open {store.description}: {f.getErrorMessage()}"
            if self._stopping:
                return None
            log.error("{error}; retrying in {delay}s", error=self.storeError, delay=delay)
            retry: Deferred[Deferred[None]] = deferLater(
                self.reactor, delay, self._openStore, min(delay * 2, STORE_RETRY_MAX)
            )
            return retry  # type: ignore[return-value]

        return store.open().addCallbacks(opened, failed)

    def whenReady(self) -> Deferred[None]:
        """Fires once the store is open and the service answers every request."""
        if self.storeReady:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._readyWaiters.append(d)
        return d

    # -- health --------------------------------------------------------------------------

    def healthChecks(self) -> Deferred[dict[str, str]]:
        results: dict[str, str] = {}
        results.update(self.hub.health())

        if not self.storeReady:
            results["store"] = self.storeError
            return succeed(results)
        assert self.store is not None

        def ok(_: object) -> dict[str, str]:
            results["store"] = "ok"
            return results

        def bad(f: Failure) -> dict[str, str]:
            results["store"] = f"{self.store.description}: {f.getErrorMessage()}"  # type: ignore[union-attr]
            return results

        d = self.store.ping()
        d.addTimeout(5, self.reactor)
        return d.addCallbacks(ok, bad)

    def metrics(self) -> list[tuple[str, str, str, float]]:
        return self.registry.metrics() + self.pusherApi.metrics() + self.site.limits.metrics()

    # -- shut-down -----------------------------------------------------------------------

    def _closeHTTP(self) -> Deferred[None]:
        d = self.site.closeConnections()
        d.addTimeout(DRAIN_TIMEOUT, self.reactor)
        return d

    def stopService(self) -> Deferred[None]:
        self._stopping = True
        log.info("stopping: closing listeners and telling clients to reconnect")
        stops = [port.stopListening() for port in self.ports]
        self.ports = []
        for guard in self.acceptGuards:
            guard.stop()
        d: Deferred[Any] = DeferredList([s for s in stops if s is not None])
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("close WebSocket connections", lambda: self.registry.closeAll(4200, "shutting down")),
            ("close HTTP connections", self._closeHTTP),
            ("stop the hub", self.hub.state.stop),
            ("stop the broker", self.broker.stop),
            ("close the store", lambda: self.store.close() if self.store is not None else None),
            ("stop child services", lambda: MultiService.stopService(self)),
        ]

        def run(_: object, step: Callable[[], Any]) -> Any:
            return step()

        def failed(f: Failure, what: str) -> None:
            log.failure("could not {what}", f, what=what)

        for what, step in steps:
            # One step failing must not keep the later ones (above all closing the store) from
            # running.
            d.addCallback(run, step)
            d.addErrback(failed, what)
        d.addCallback(lambda _: log.info("stopped"))
        return d
