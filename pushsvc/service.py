"""
The one service that owns start-up and shut-down order.

Start: check the private Twisted/Autobahn attributes we use (L{pushsvc.compat}) -> lock the data
directory (creating it if missing) -> credentials -> store, broker, hub and resources ->
open-file limit raised, connection caps set -> the children in order: one listener per
C{--listen} (C{strports.service}), then periodic work (the cluster heartbeat, a TimerService) ->
open and migrate the store, retrying while it is unreachable (health says so meanwhile). A
failure before the reactor runs (an internal gone, data directory unusable or locked, port
taken, PostgreSQL database missing) raises
L{StartupError}: one line on stderr, exit status 1, no traceback, and nothing left behind (no
data directory, no pidfile).

Stop (L{PushService.stopService}, explicit steps, not the children's reverse order): stop the
listener children -> tell WebSocket clients to reconnect elsewhere (4200) -> drain HTTP ->
stop the heartbeat and withdraw this process from the cluster state -> stop the broker -> write
the webhooks not yet delivered to the store -> close the store, so nothing acknowledged is
half-written -> the other children -> unlock.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from twisted.application import strports
from twisted.application.service import IService, MultiService
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from pushsvc import __version__
from pushsvc.admin.site import loopbackOnly
from pushsvc.apps import SECRET_ENV, App, Apps, loadOrCreateApp, loadOrCreateKey
from pushsvc.appsfile import AppsFileError, diffApps, loadAppsFile
from pushsvc.appstats import AppStats
from pushsvc.chat import ChatAPI, makeChatResource
from pushsvc.compat import PrivateAPIMissing, checkPrivateAPIs
from pushsvc.datadir import DataDirError, lockDataDir, removeCreated, unlockDataDir
from pushsvc.filemodes import privateDirectory
from pushsvc.health import HealthResource
from pushsvc.http.channel import HTTPLimits
from pushsvc.http.limits import AcceptGuard, ConnectionLimits, raiseOpenFileLimit
from pushsvc.http.proxy import TrustedProxies
from pushsvc.http.site import JSONNotFound, makeSite, webRoot
from pushsvc.interfaces import IBroker, PushSettings
from pushsvc.session import SessionSigner
from pushsvc.stall import ReactorMeter
from pushsvc.store import IStore, storeFromURL
from pushsvc.waiters import Waiters
from pushsvc.webhooks.format import parseWebhooks

log = Logger()

SESSION_KEY_ENV = "PUSHSVC_SESSION_KEY"
STORE_RETRY_MAX = 30.0
DRAIN_TIMEOUT = 10.0  # seconds a stop waits for HTTP responses in progress


class StartupError(SystemExit, Exception):
    """
    A start-up failure the operator can fix; C{str()} is the one line that says how.

    An L{Exception}, so that twistd removes its pidfile and tells a daemon's waiting parent
    (C{UnixApplicationRunner.postApplication} catches Exception, not SystemExit); and a
    C{SystemExit(1)}, so that the process then ends with status 1 and no traceback.
    """

    def __init__(self, message: str) -> None:
        super().__init__(1)
        self.message = message

    def __str__(self) -> str:
        return self.message


def startupError(message: str) -> StartupError:
    """Log C{message}, write it as one line on the real stderr, and return the error to raise."""
    message = f"pushsvc: {message}"
    log.critical("{message}", message=message)
    # twistd has replaced sys.stderr with the log by now; the person who started it should see
    # the line on the real one. (A daemon's is /dev/null: tap.preflight answers before the fork.)
    if sys.__stderr__ is not None:
        try:
            sys.__stderr__.write(message + "\n")
            sys.__stderr__.flush()
        except OSError:
            pass
    return StartupError(message)


class ListenFailed(Exception):
    """A C{--listen} endpoint could not bind: its description and the reason."""

    def __init__(self, description: str, reason: str) -> None:
        super().__init__(description, reason)
        self.description = description
        self.reason = reason


class _Bound:
    """
    The endpoint of a listener child: hands the port to C{bound} once listening, and fails
    with L{ListenFailed} (naming the C{--listen} value) when it cannot.
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        description: str,
        bound: Callable[[IListeningPort, str], None],
        required: bool = True,
    ) -> None:
        self.endpoint = endpoint
        self.description = description
        self.bound = bound
        self.required = required  # else a bind failure is only logged

    def listen(self, factory: Any) -> Deferred[IListeningPort]:
        def ok(port: IListeningPort) -> IListeningPort:
            self.bound(port, self.description)
            return port

        def failed(f: Failure) -> Any:
            if not self.required:
                log.warn(
                    "no admin listener: cannot listen on {description}: {reason} "
                    "(give --admin-listen to choose another, or none)",
                    description=self.description,
                    reason=f.getErrorMessage(),
                )
                return None
            return Failure(ListenFailed(self.description, f.getErrorMessage()))

        return self.endpoint.listen(factory).addCallbacks(ok, failed)


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
    maxConnections: int = 0  # 0: derived from the open-file limit (pushsvc.http.limits)
    maxConnectionsPerIp: int = 1000  # 0: no cap per client address
    trustedProxies: tuple[str, ...] = ()  # addresses/networks whose X-Forwarded-For is believed
    headerTimeout: float = 10.0  # --header-timeout: request line and headers within this
    bodyMinRate: int = 1024  # --body-min-rate: bytes/s a body must keep up, after the above
    idleTimeout: float = 60.0  # --idle-timeout: idle keep-alive, or replies not read
    logWebSockets: bool = True  # one info line per WebSocket opened and closed
    webhookUrls: tuple[str, ...] = ()  # --webhook-url: the default app's webhook receivers
    webhookDebounce: float = 3.0  # --webhook-debounce: vacated/member_removed wait this long
    subscriptionCount: bool = False  # --subscription-count: the default app sends the counts
    appsFile: Path | None = None  # --apps-file: several apps, reloaded on SIGHUP (appsfile.py)
    # The inside view (issue 15): None for no admin listener (tap's default is loopback:8081).
    adminListen: str | None = None
    adminListenGiven: bool = False  # given explicitly: a bind failure stops start-up
    adminTokenFile: Path | None = None
    recording: bool = True  # --no-recording turns it off
    gcFreeze: str = "survivors"  # --gc-freeze: survivors, startup or off
    recordedRequests: int = 1000  # --recorded-requests: the ring's size


def boundAddress(port: IListeningPort) -> str:
    """Where C{port} listens: C{host:port} (the real port when C{tcp:0} was asked), or a path."""
    address = port.getHost()
    if isinstance(address, IPv4Address | IPv6Address):
        host = f"[{address.host}]" if isinstance(address, IPv6Address) else address.host
        return f"{host}:{address.port}"
    name = getattr(address, "name", None)
    return name.decode(errors="replace") if isinstance(name, bytes) else str(address)


class PushService(MultiService):
    """Everything of one pushsvc process, in one reactor."""

    def __init__(self, config: ServiceConfig, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.ports: list[IListeningPort] = []
        self.acceptGuards: list[AcceptGuard] = []
        self.listenersClosed: Deferred[Any] = succeed(None)
        self.storeReady = False
        self.storeError = "opening"
        self.store: IStore | None = None
        self._stopping = False
        self._readyWaiters: Waiters[None] = Waiters()
        self._lock: int | None = None
        self._previousSIGHUP: Any = None
        self._fullApps: set[str] = set()  # at max_connections (cluster-wide), for the log
        # An ILogObserver for twistd to use instead of its own (tap: --log-format json).
        self.logObserver: Any = None

    def setServiceParent(self, parent: Any) -> Any:
        """
        Join C{parent}; when it is twistd's Application, hand it L{logObserver}: twistd asks the
        application for an C{ILogObserver} component before it begins logging.
        """
        if self.logObserver is not None and hasattr(parent, "setComponent"):
            from twisted.logger import ILogObserver

            parent.setComponent(ILogObserver, self.logObserver)
        return super().setServiceParent(parent)

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
        # "generated" only for what was made up just now, not for what options or files gave.
        log.info(
            "app id {appId}, key {appKey}; secret in {where}{note}",
            note=f" (generated now: {', '.join(generated)})" if generated else "",
            appId=app.id,
            appKey=app.key,
            where=where,
        )
        sessionKey = loadOrCreateKey(
            c.dataDir, "session-key", c.sessionKeyFile, c.environ.get(SESSION_KEY_ENV)
        )
        return app, sessionKey

    def _loadAppsFile(self, path: Path) -> tuple[Apps, bytes]:
        """The apps of C{--apps-file} and the session key; a bad file stops start-up."""
        c = self.config
        for change in privateDirectory(c.dataDir):
            log.warn("{change}: the data directory is for this user only", change=change)
        try:
            loaded = loadAppsFile(path)
        except AppsFileError as e:
            raise startupError(str(e)) from None
        apps = Apps(loaded.apps, loaded.chatApp)
        log.info(
            "{count} apps from {path}: {ids}; the chat uses app {chat}",
            count=len(apps),
            path=str(path),
            ids=", ".join(a.id if a.enabled else f"{a.id} (disabled)" for a in apps),
            chat=apps.default.id,
        )
        sessionKey = loadOrCreateKey(
            c.dataDir, "session-key", c.sessionKeyFile, c.environ.get(SESSION_KEY_ENV)
        )
        return apps, sessionKey

    def reloadApps(self) -> bool:
        """
        Read C{--apps-file} again and serve what it says (SIGHUP): added apps work at once,
        connections of removed apps close with 4001 and of disabled ones with 4003, changed
        limits and secrets apply to what comes next; other apps' connections are not touched.
        A file that fails validation is refused as a whole, with one log line, and the running
        apps stay. @return: whether the new file is in force.
        """
        path = self.config.appsFile
        if path is None:
            log.info("SIGHUP: there is no --apps-file to reload")
            return False
        try:
            loaded = loadAppsFile(path)
        except AppsFileError as e:
            log.error("apps file not reloaded, the running apps stay: {error}", error=str(e))
            return False
        diff = diffApps(self.apps, loaded.apps)
        self.apps.replace(loaded.apps, loaded.chatApp)
        closed = self.wsFactory.closeApps(dict(diff.close))
        log.info(
            "apps file reloaded: {count} apps ({summary}); {closed} connections closed; "
            "the chat uses app {chat}",
            count=len(self.apps),
            summary=diff.summary(),
            closed=closed,
            chat=self.apps.default.id,
        )
        return True

    def _onSIGHUP(self, signum: int, frame: Any) -> None:
        # A signal handler runs between two bytecodes: do the work in the reactor's turn.
        self.reactor.callFromThread(self.reloadApps)

    def _handleSIGHUP(self) -> None:
        if self.config.appsFile is not None and hasattr(signal, "SIGHUP"):
            self._previousSIGHUP = signal.signal(signal.SIGHUP, self._onSIGHUP)

    def _restoreSIGHUP(self) -> None:
        previous, self._previousSIGHUP = self._previousSIGHUP, None
        if previous is not None:
            signal.signal(signal.SIGHUP, previous)

    def _limitedConnectionCounts(self) -> dict[str, int]:
        """
        App id -> open connections here, of the apps with a max_connections (the Redis state
        asks every heartbeat). Logs when an app reaches its limit across the cluster, and when
        it is below it again (as of the last heartbeat).
        """
        counts = {}
        for app in self.apps:
            if not app.maxConnections:
                continue
            here = counts[app.id] = self.appStats.of(app.id).connections
            total = here + self.hub.state.connectionsElsewhere(app.id)
            full = total >= app.maxConnections
            if full != (app.id in self._fullApps):
                if full:
                    self._fullApps.add(app.id)
                    log.info(
                        "app {appId} has {total} connections across the cluster, its "
                        "max_connections {limit}: new ones get 4004",
                        appId=app.id,
                        total=total,
                        limit=app.maxConnections,
                    )
                else:
                    self._fullApps.discard(app.id)
                    log.info("app {appId} is below its max_connections again", appId=app.id)
        return counts

    def _build(self) -> Any:
        from pushsvc.api import makeApiResource, makeUsersResource
        from pushsvc.fanout.registry import Registry
        from pushsvc.hub import Hub
        from pushsvc.local import LocalBroker
        from pushsvc.webhook import NotifyResource
        from pushsvc.ws.protocol import PushWebSocketResource, makeAppFactory

        c = self.config
        if c.appsFile is not None:
            apps, sessionKey = self._loadAppsFile(c.appsFile)
        else:
            app, sessionKey = self._loadApp()
            if c.webhookUrls:
                app = replace(app, webhooks=parseWebhooks(list(c.webhookUrls)))
            if c.subscriptionCount:
                app = replace(app, subscriptionCount=True)
            apps = Apps([app])
        self.apps = apps
        self.appStats = AppStats()
        self.store = storeFromURL(c.storeURL, c.dataDir, self.reactor)
        settings = PushSettings(
            activityTimeout=c.activityTimeout,
            maxOutboundBytes=c.maxOutboundBytes,
            allowedOrigins=c.allowedOrigins,
            logWebSockets=c.logWebSockets,
        )
        self.registry = Registry(settings, self.reactor)
        if c.redis is not None:
            from pushsvc.redis.address import parseRedisAddress
            from pushsvc.redis.broker import RedisBroker
            from pushsvc.redis.state import RedisState

            redis = RedisBroker(parseRedisAddress(c.redis), self.reactor)
            self.broker: IBroker = redis
            self.hub = Hub(
                self.registry, redis, self.reactor, RedisState(redis, self.registry, self.reactor)
            )
        else:
            self.broker = LocalBroker(self.reactor)
            self.hub = Hub(self.registry, self.broker, self.reactor)
        self._buildWebhooks(apps)
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
        users = makeUsersResource(apps, self.hub, self.reactor.seconds)
        self.pusherApi.appStats = self.appStats
        self.wsFactory = makeAppFactory(apps, self.hub, self.registry, self.reactor, settings)
        self.wsFactory.appStats = self.appStats
        self.hub.state.countConnections(self._limitedConnectionCounts)
        self.site = makeSite(
            webRoot(),
            makeChatResource(chat),
            self.pusherApi,
            users,
            NotifyResource(apps, self.hub, self.reactor.seconds),
            PushWebSocketResource(self.wsFactory),
            HealthResource(self.healthChecks, detailed=False),
            JSONNotFound(),  # /metrics is on the admin listener only
            HTTPLimits(c.headerTimeout, c.bodyMinRate, c.idleTimeout),
            self.reactor,
        )
        self.site.logPublishes = c.logPublishes
        # The channel's fast path for publishes (http/channel.py): with the in-process broker,
        # which takes a publish at once, so the reply is written in the same turn.
        self.site.publishAPI = self.pusherApi if c.redis is None else None
        self._buildInsideView([self.pusherApi, users], chat)
        return self.site

    def _buildInsideView(self, apis: list[Any], chat: ChatAPI) -> None:
        """
        The recorder (unless --no-recording) wrapped around the site's tree, the store, the
        broker, the signature checks and the fan-out, by composition; the metrics; the admin site.
        """
        from pushsvc.admin.metrics import Metrics, MetricsResource, perAppFigures
        from pushsvc.admin.site import Figures, makeAdminSite
        from pushsvc.recording import Recorder, classifier
        from pushsvc.recording.wrap import (
            RecordingBroker,
            RecordingRoot,
            RecordingStore,
            instrumentRegistry,
            instrumentWebSocket,
            recordedCheck,
            recordedCommit,
            recordedWebhookPost,
        )

        c = self.config
        self.recorder = recorder = (
            Recorder(self.reactor, c.recordedRequests) if c.recording else None
        )
        if recorder is not None:
            classify = classifier(self.apps)
            self.site.resource = RecordingRoot(self.site.resource, recorder, classify)
            assert self.store is not None
            chat.store = RecordingStore(self.store, recorder)
            self.hub.broker = RecordingBroker(
                self.broker, recorder, "PUBLISH" if c.redis is not None else "in-process"
            )
            instrumentRegistry(self.registry, recorder)
            instrumentWebSocket(self.wsFactory, recorder)
            for api in apis:
                api.verify = recordedCheck(recorder, "signature", api.verify)
            self.pusherApi.commitPublish = recordedCommit(
                recorder, classify, self.pusherApi.commitPublish
            )
            # Webhook POSTs are sent from timers, outside any request: their kind's aggregates.
            self.webhooks.post = recordedWebhookPost(recorder, self.webhooks.post)
        perApp = lambda: perAppFigures(self.registry, [a.id for a in self.apps])  # noqa: E731
        self.metricsRegistry = Metrics(
            self.metricFigures,
            perApp,
            recorder,
            self.appStats.samples,
            getattr(self.reactor, "callInThread", None),
        )
        self.reactorMeter = ReactorMeter(self.reactor, describe=self._describeConnections)
        self.metricsRegistry.watch(self.reactorMeter)
        self.figures = Figures(
            self.reactor,
            self.registry,
            perApp,
            recorder,
            lambda: {appId: f.sent for appId, f in self.webhooks.allFigures().items()},
        )
        self.adminSite = None
        if c.adminListen is not None:
            token = None
            if not loopbackOnly(c.adminListen):
                token = loadOrCreateKey(c.dataDir, "admin-token", c.adminTokenFile, None)
            self.adminSite, self.adminStreams = makeAdminSite(
                recorder,
                self.figures,
                MetricsResource(self.metricsRegistry),
                HealthResource(self.healthChecks, detailed=True),
                token,
                self.reactor,
            )

    def _buildWebhooks(self, apps: Apps) -> None:
        """The webhooks of every app, told by the hub, kept in the store, sent with treq."""
        from pushsvc.webhooks.sender import WebhookSender, treqPoster

        post, self._webhookPool = treqPoster(self.reactor)
        self.webhooks = WebhookSender(
            apps.byId, self.store, self.reactor, post, debounce=self.config.webhookDebounce
        )
        self.hub.webhooks = self.webhooks
        from pushsvc.counts import SubscriptionCounts

        self.hub.counts = SubscriptionCounts(
            apps.byId, self.hub.sendInternal, self.reactor, self.webhooks
        )

    def _stopWebhooks(self) -> Deferred[None]:
        """Write what the webhooks hold to the store, then close their HTTP connections."""
        d = self.webhooks.stop()
        return d.addCallback(lambda _: self._webhookPool.closeCachedConnections())

    def _applyLimits(self, site: Any) -> None:
        """Raise the open-file limit; give the site its caps and trusted proxies (logged)."""
        c = self.config
        fileLimit = raiseOpenFileLimit()
        site.limits = limits = ConnectionLimits.fromFileLimit(
            c.maxConnections, c.maxConnectionsPerIp, fileLimit
        )
        site.trustedProxies = TrustedProxies(c.trustedProxies)
        log.info(
            "at most {max} connections ({how}), {perIp} per client address; "
            "trusted proxies: {proxies}",
            max=limits.maxConnections,
            how=(
                "--max-connections"
                if c.maxConnections
                else f"the open-file limit {fileLimit} less {fileLimit - limits.maxConnections} "
                "kept for the store, Redis, logs and refusals"
                if fileLimit
                else "no limit"
            ),
            perIp=c.maxConnectionsPerIp or "no cap",
            proxies=", ".join(site.trustedProxies.entries()) or "none",
        )

    def _describeConnections(self) -> str:
        limits = self.site.limits
        return f"{limits.open} connections open (cap {limits.maxConnections})"

    def startService(self) -> None:
        """
        Lock the data directory, build everything, listen, then open the store in the background.

        @raise StartupError: something the operator must fix; nothing is left behind.
        """
        try:
            checkPrivateAPIs(self.reactor)
        except PrivateAPIMissing as e:
            raise startupError(str(e)) from None
        try:
            self._lock, created = lockDataDir(self.config.dataDir)
        except DataDirError as e:
            raise startupError(str(e)) from None
        try:
            site = self._build()
            self._checkStore()
            self._applyLimits(site)
            listeners = self._addListeners(site)
            listeners += self._addAdminListener()
            for timer in self.hub.state.services():
                timer.setServiceParent(self)  # periodic work: the cluster heartbeat
            self._startChildren(listeners)
            self._handleSIGHUP()
            self.reactorMeter.install(self.reactor)
        except BaseException:
            unlockDataDir(self._lock)
            self._lock = None
            removeCreated(created)
            raise
        log.info(
            "pushsvc {version} started: open {urls} (serving app {apps}; the chat uses app {chat})",
            version=__version__,
            urls=", ".join(self.urls()) or "(no TCP listener)",
            apps=", ".join(f"id {a.id}, key {a.key}" for a in self.apps),
            chat=self.apps.default.id,
        )
        # The broker connects (and reconnects) in the background: the process serves what it
        # can while Redis is away, and health says so.
        d = self.broker.start()
        d.addCallback(lambda _: self._openStore())
        # Batches kept from before a restart go out once the store is open.
        self.whenReady().addCallback(lambda _: self.webhooks.resume())

    def _checkStore(self) -> None:
        """A store that says it cannot work as configured (e.g. a missing PostgreSQL database)
        stops start-up; one that is merely unreachable is retried later."""
        check = getattr(self.store, "startupProblem", None)
        problem = check() if check is not None else None
        if problem:
            raise startupError(problem)

    def _addListeners(self, site: Any) -> list[IService]:
        """
        One child service per C{--listen} (C{strports.service}: a bind failure is raised at
        start, not only logged); each remembers its port and guards its accept loop.
        """
        listeners: list[IService] = []
        for description in self.config.listen:
            listener = strports.service(description, site, reactor=self.reactor)
            listener.endpoint = _Bound(listener.endpoint, description, self._bound)
            listener.setName(f"listen {description}")
            listener.setServiceParent(self)
            listeners.append(listener)
        return listeners

    def _addAdminListener(self) -> list[IService]:
        """
        The admin listener, a listener child like the others; the default one (not given
        explicitly) only warns when its port is taken, so that several processes on one machine
        start (each but the first without an inside view).
        """
        c = self.config
        if self.adminSite is None or c.adminListen is None:
            return []
        description = c.adminListen
        listener = strports.service(description, self.adminSite, reactor=self.reactor)
        listener.endpoint = _Bound(
            listener.endpoint, description, self._adminBound, required=c.adminListenGiven
        )
        listener.setName(f"listen admin {description}")
        listener.setServiceParent(self)
        return [listener]

    def _adminBound(self, port: IListeningPort, description: str) -> None:
        self.adminPort = port
        self.figures.start()
        log.info(
            "admin listener (dashboard, /metrics, detailed health) on {description}{token}",
            description=description,
            token="" if loopbackOnly(description) else "; it needs the admin token",
        )

    def _bound(self, port: IListeningPort, description: str) -> None:
        self.ports.append(port)
        guard = AcceptGuard.install(port, self.reactor, self._describeConnections)
        if guard is not None:
            self.acceptGuards.append(guard)
        log.info(
            "listening on {description} (bound to {address})",
            description=description,
            address=boundAddress(port),
        )

    def _startChildren(self, listeners: list[IService]) -> None:
        """
        Start the children in order (listeners, then periodic work). A listener that cannot
        bind stops start-up with one line; those already listening are closed again.
        """
        try:
            super().startService()
        except ListenFailed as e:
            self.running = False
            stops = [listener.stopService() for listener in listeners if listener.running]
            # Fires once the ports bound before the failure are closed (a reactor turn).
            self.listenersClosed = DeferredList([d for d in stops if d is not None])
            for child in list(self):
                child.disownServiceParent()
            self.ports = []
            self.acceptGuards = []
            raise startupError(
                f"cannot listen on {e.description}: {e.reason}; stop what uses "
                "it, or choose another --listen"
            ) from None

    def urls(self) -> list[str]:
        """Where a browser opens the chat, one URL per TCP listener (C{localhost} for loopback
        and every-interface listeners)."""
        urls = []
        for description, port in zip(self.config.listen, self.ports, strict=False):
            address: Any = port.getHost()
            host = getattr(address, "host", None)
            if host is None:
                continue
            if host in ("127.0.0.1", "0.0.0.0", "::", "::1", ""):
                host = "localhost"
            elif ":" in host:
                host = f"[{host}]"
            scheme = "https" if description.startswith("ssl:") else "http"
            urls.append(f"{scheme}://{host}:{address.port}/")
        return urls

    def _openStore(self, delay: float = 0.5) -> Deferred[None]:
        assert self.store is not None
        store = self.store

        def opened(_: object) -> None:
            if not self._stopping and self.config.gcFreeze != "off":
                # Start-up is over (listening, store open): what is alive now lives as long as
                # the process; later collections need not walk it. Before "ready" is said: the
                # collection before the freeze takes tens of ms, while nothing is asked yet.
                self.reactorMeter.freeze(survivors=self.config.gcFreeze == "survivors")
            self.storeReady = True
            self.storeError = "ok"
            self._readyWaiters.fire()
            log.info("message store ready: {store}", store=store.description)

        def failed(f: Failure) -> Deferred[None] | None:
            self.storeError = f"cannot open {store.description}: {f.getErrorMessage()}"
            if self._stopping:
                return None
            log.error("{error}; retrying in {delay}s", error=self.storeError, delay=delay)
            retry: Deferred[Deferred[None]] = deferLater(
                self.reactor, delay, self._openStore, min(delay * 2, STORE_RETRY_MAX)
            )
            return retry  # type: ignore[return-value]  # a Deferred chained in: it fires with None

        return store.open().addCallbacks(opened, failed)

    def whenReady(self) -> Deferred[None]:
        """Fires once the store is open and the service answers every request."""
        return self._readyWaiters.wait(done=self.storeReady)

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
            results["store"] = f"{self.store.description}: {f.getErrorMessage()}"  # type: ignore[union-attr]  # set when storeReady
            return results

        d = self.store.ping()
        d.addTimeout(5, self.reactor)
        return d.addCallbacks(ok, bad)

    def metricFigures(self) -> list[tuple[str, str, str, float]]:
        """The unlabelled figures; the per-app ones go to /metrics as labelled series."""
        return (
            self.registry.metrics()
            + self.pusherApi.metrics()
            + self.site.limits.metrics()
            + self.webhooks.metrics()
        )

    def metrics(self) -> list[tuple[str, str, str, float]]:
        return (
            self.registry.metrics()
            + self.pusherApi.metrics()
            + self.site.limits.metrics()
            + self.webhooks.metrics()
            + self.appStats.metrics()
        )

    # -- shut-down -----------------------------------------------------------------------

    def _closeHTTP(self) -> Deferred[None]:
        d = self.site.closeConnections()
        d.addTimeout(DRAIN_TIMEOUT, self.reactor)
        return d

    def _unlock(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            unlockDataDir(lock)

    def _stopListeners(self) -> Deferred[Any]:
        for guard in self.acceptGuards:
            guard.stop()
        figures = getattr(self, "figures", None)
        if figures is not None:
            figures.stop()
        streams = getattr(self, "adminStreams", None)
        if streams is not None:
            streams.closeAll()
        self.ports = []
        stops = [c.stopService() for c in self if (c.name or "").startswith("listen ")]
        return DeferredList([s for s in stops if s is not None])

    def stopService(self) -> Deferred[None]:
        """
        Stop in this order, each step after the one before has finished (a step that fails is
        logged and the next runs): stop listening (the listener children), close the WebSocket
        connections (4200: reconnect elsewhere), drain the HTTP connections, stop the cluster
        state (its heartbeat child, then withdraw this node's share), stop the broker, close the
        store, stop what children are left, unlock the data directory. Fires with None.
        """
        self._stopping = True
        self._restoreSIGHUP()
        log.info("stopping: closing listeners and telling clients to reconnect")
        d: Deferred[Any] = self._stopListeners()
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("close WebSocket connections", lambda: self.registry.closeAll(4200, "shutting down")),
            ("close HTTP connections", self._closeHTTP),
            ("stop the hub", self.hub.state.stop),
            ("stop the broker", self.broker.stop),
            ("keep pending webhooks in the store", self._stopWebhooks),
            ("close the store", lambda: self.store.close() if self.store is not None else None),
            ("stop child services", lambda: MultiService.stopService(self)),
            ("unlock the data directory", self._unlock),
            ("stop timing the reactor", self.reactorMeter.uninstall),
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
