"""
The WebSocket side: one L{PushServerProtocol} per connection at C{/app/{key}}, speaking Pusher
protocol v7. The frames, error and close codes are documented at the top of L{pushsvc.frames};
parsing lives there (pure), this module only acts on parsed frames.

The handlers talk to the hub only (subscribe, unsubscribe, sign-in, client events, disconnect);
what keeps Autobahn lean, the twisted.web hand-off and the keep-alive are in L{pushsvc.ws.autobahn}.

Frame size: Autobahn enforces C{maxFrameBytes} on every message and closes with 1009 above it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource

from pushsvc import frames
from pushsvc.apps import App, Apps
from pushsvc.appstats import AppCounters, AppStats
from pushsvc.fanout.registry import Outbound, Registry
from pushsvc.frames import (
    CLOSE_APP_DISABLED,
    CLOSE_BAD_PATH,
    CLOSE_BAD_VERSION,
    CLOSE_NO_VERSION,
    CLOSE_OVER_CAPACITY,
    CLOSE_OVER_QUOTA,
    CLOSE_SLOW_CONSUMER,
    CLOSE_UNAUTHENTICATED,
    CLOSE_UNKNOWN_KEY,
    CLOSE_UNSUPPORTED_VERSION,
    ERR_MALFORMED,
    ERR_NOT_ALLOWED,
    ERR_RATE_LIMIT,
    ClientFrame,
    Member,
    ProtocolError,
    channelKind,
    isCacheChannel,
    isServerToUser,
    parseClientFrame,
    wsTextFrame,
)
from pushsvc.http.proxy import clientOf
from pushsvc.hub import Hub
from pushsvc.interfaces import PushSettings
from pushsvc.signing import verifyChannelAuth, verifyUserAuth
from pushsvc.ws.autobahn import Keepalive, LeanServerProtocol, optionsOnClass, takeProducer

log = Logger()

Handler = Callable[["PushServerProtocol", ClientFrame], None]


def _nothing() -> None:
    pass


PING_FRAME = b"\x89\x00"  # a WebSocket ping, FIN set, no payload (RFC 6455, 5.5.2)


def _refusal(request: ConnectionRequest, apps: Apps) -> tuple[App | None, int, str]:
    """
    The app of a handshake and 0, or the close code and reason that refuse it (with the app
    when it is disabled, else None).
    """
    parts = request.path.strip("/").split("/")
    if len(parts) < 2 or parts[-2] != "app" or not parts[-1]:
        return None, CLOSE_BAD_PATH, "the path must be /app/{key}"
    versions = request.params.get("protocol")
    if not versions:
        return None, CLOSE_NO_VERSION, "no protocol version given: add ?protocol=7"
    try:
        version = int(versions[0])
    except ValueError:
        return None, CLOSE_BAD_VERSION, "the protocol version must be a number"
    if version not in frames.SUPPORTED_PROTOCOLS:
        return None, CLOSE_UNSUPPORTED_VERSION, f"unsupported protocol version {version}"
    app = apps.byKey(unquote(parts[-1]))
    if app is None:
        return None, CLOSE_UNKNOWN_KEY, "unknown app key"
    if not app.enabled:
        return app, CLOSE_APP_DISABLED, "the app is disabled"
    return app, 0, ""


class PushServerProtocol(LeanServerProtocol):
    """One client connection."""

    factory: PushServerFactory
    handlers: dict[str, Handler] = {}

    socketId = ""
    appId = ""
    app: App | None = None
    outbound: Outbound | None = None
    userId: str | None = None
    userInfo: Any = None
    client = ""  # its address, for the open and close log lines (PushSettings.logWebSockets)
    openedAt = 0.0
    pingSentAt: float | None = None
    lastSeen = 0.0
    _refused: tuple[int, str] | None = None
    _closing = False
    _counters: AppCounters | None = None  # the app's, while this connection counts as open
    _authTimer: Any = None  # user_authentication_timeout
    _joining: frozenset[str] = frozenset()  # presence channels waiting for their member count
    _tokens = 0.0
    _tokensAt = 0.0

    # -- handshake and life --------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.factory.registry.track(self)
        super().connectionMade()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self.cancelTimers()
            self._cancelAuthTimer()
            self.factory.registry.untrack(self)
            self.factory.keepalive.rest(self)  # (done in onClose; whatever happened, it is out)
            self.forgetFutures()
            outbound = self.outbound
            if outbound is not None:
                # Its onOverflow is a method of this protocol: a cycle (protocol, outbound,
                # transport, Autobahn's per-connection objects: ~20) that only the collector
                # would free. Nothing writes to a lost connection.
                outbound.drop()
                outbound.onOverflow = _nothing

    def onConnect(self, request: ConnectionRequest) -> None:
        f = self.factory
        origin = request.headers.get("origin")
        app, code, reason = _refusal(request, f.apps)
        # The app's allowed_origins, if it has some, else --allowed-origins.
        allowed = app.allowedOrigins if app is not None and app.allowedOrigins else None
        allowed = allowed or f.settings.allowedOrigins
        if allowed and origin and origin not in allowed:
            raise ConnectionDeny(403, "origin not allowed")
        if code:
            self._refused = (code, reason)
            if app is not None:  # disabled
                self.appId = app.id
                f.appStats.of(app.id).refusedDisabled += 1
        elif app is not None:
            self.app = app
            self.appId = app.id
            if f.overCap is not None:  # the site's connection caps (pushsvc.http.limits)
                self._refused = (CLOSE_OVER_CAPACITY, f.overCap)
        if f.settings.logWebSockets:
            # The client's address (behind --trusted-proxies, the forwarded one), from the
            # upgrade request (PushWebSocketResource.render), else the TCP peer.
            peer: Any = self.transport.getPeer()  # type: ignore[union-attr]  # connected: transport is set
            self.client = f.client or str(getattr(peer, "host", request.peer))

    def onOpen(self) -> None:
        f = self.factory
        transport: Any = self.transport
        self.lastSeen = f.clock.seconds()
        if self._refused is None and not f.hub.acceptingConnections:
            # The broker lost its link: events published elsewhere would not reach this
            # connection. The client backs off and tries again (maybe another node).
            self._refused = (CLOSE_OVER_CAPACITY, "cannot deliver events now: try again later")
        counters = f.appStats.of(self.appId) if self.app is not None else None
        if self._refused is None and counters is not None and self.app is not None:
            if f.overQuota(self.app, counters.connections):
                counters.refusedOverQuota += 1
                self._refused = (CLOSE_OVER_QUOTA, "over the app's connection quota")
        if self._refused is not None:
            code, reason = self._refused
            if f.settings.logWebSockets:
                log.info(
                    "WebSocket refused: app {appId}, client {client}, code {code} ({reason})",
                    appId=self.appId or "-",
                    client=self.client,
                    code=code,
                    reason=reason,
                )
            transport.write(wsTextFrame(frames.error(code, reason)))
            self._closing = True
            self.sendClose(code, reason)
            return
        self.socketId = f.hub.newSocketId()
        self.outbound = Outbound(
            transport.write, f.settings.maxOutboundBytes, self._tooSlow, transport
        )
        takeProducer(transport, self.outbound)
        self.forgetHandshake()
        assert self.app is not None and counters is not None
        self._tokens = float(self._clientEventRate())
        self._tokensAt = self.lastSeen
        self._counters = counters
        counters.connections += 1
        counters.connectionsTotal += 1
        if self.app.userAuthenticationTimeout > 0:
            self._authTimer = f.clock.callLater(
                self.app.userAuthenticationTimeout, self._notSignedIn
            )
        f.hub.connect(self)
        f.keepalive.wake(self)
        self.send(frames.connectionEstablished(self.socketId, f.settings.activityTimeout))
        if f.settings.logWebSockets:
            self.openedAt = self.lastSeen
            log.info(
                "WebSocket open: app {appId}, client {client}, socket {socketId}",
                appId=self.appId,
                client=self.client,
                socketId=self.socketId,
            )

    def dataReceived(self, data: bytes) -> None:
        self.lastSeen = self.factory.clock.seconds()
        if (
            len(data) == 6
            and data[0] == 0x8A  # FIN, pong
            and data[1] == 0x80  # masked, no payload
            and self.state == self.STATE_OPEN
            and not self.data
            and self.current_frame is None
        ):
            # The answer to the keep-alive's ping, alone in its read and between two frames:
            # nothing to do but note the life (above). Autobahn's parse of it costs ~20x more,
            # and with 100,000 connections there are thousands a second.
            return
        super().dataReceived(data)

    def sendPing(self, payload: bytes | None = None) -> None:
        # The keep-alive's ping (no payload) is two constant bytes, written like any frame
        # (straight to the socket when nothing is buffered): Autobahn builds each one anew and
        # hands it to transport.write, a reactor turn per connection.
        outbound = self.outbound
        if payload or outbound is None or self._closing or self.state != self.STATE_OPEN:
            super().sendPing(payload)
            return
        outbound.send(PING_FRAME)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.outbound is None:
            return
        self.outbound.drop()
        self._cancelAuthTimer()
        if self._counters is not None:
            self._counters.connections -= 1
            self._counters = None
        f = self.factory
        f.hub.disconnect(self)
        f.keepalive.rest(self)
        if f.settings.logWebSockets:
            # The code we sent, if we closed and no clean answer came; else the peer's code, or
            # 1006: no close frame at all (RFC 6455).
            sent = getattr(self, "localCloseCode", None)
            if sent and code in (None, 1006):
                code = sent
            log.info(
                "WebSocket closed: app {appId}, client {client}, socket {socketId}, "
                "code {code}, after {duration:.1f}s",
                appId=self.appId,
                client=self.client,
                socketId=self.socketId,
                code=code or 1006,
                duration=f.clock.seconds() - self.openedAt,
            )

    def _notSignedIn(self) -> None:
        self._authTimer = None
        if self.userId is None and self._counters is not None:
            self._counters.refusedUnauthenticated += 1
            self.send(frames.error(CLOSE_UNAUTHENTICATED, "not signed in in time"))
            self.closeWith(CLOSE_UNAUTHENTICATED, "connection not authorized within timeout")

    def _cancelAuthTimer(self) -> None:
        timer, self._authTimer = self._authTimer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _clientEventRate(self) -> int:
        app = self.currentApp()
        if app.maxClientEventsPerSecond is not None:
            return app.maxClientEventsPerSecond
        return self.factory.settings.clientEventsPerSecond

    def currentApp(self) -> App:
        """This connection's app as configured now (a reload may have rotated its secret)."""
        assert self.app is not None
        return self.factory.apps.byId(self.appId) or self.app

    def closeWith(self, code: int, reason: str) -> None:
        """Send a close frame with C{code}; nothing more is written to this connection."""
        if self._closing:
            return
        self._closing = True
        try:
            self.sendClose(code, reason)  # sendCloseFrame writes what is queued, first
        except Exception:
            self.dropConnection(abort=True)
        if self.outbound is not None:
            self.outbound.close()  # also when no close frame could be sent

    def sendCloseFrame(
        self, code: int | None = None, reasonUtf8: bytes | None = None, isReply: bool = False
    ) -> None:
        # Every close frame goes through here, Autobahn's own too (answering the client's close,
        # failing a connection): what was delivered before it is written before it, and
        # nothing after it.
        if self.state == self.STATE_OPEN and self.outbound is not None:
            self._closing = True
            self.outbound.finish()
        super().sendCloseFrame(code, reasonUtf8, isReply)

    def _tooSlow(self) -> None:
        # The Outbound's overflow: it writes nothing more; this connection counts and closes
        # itself with 4100 (the client backs off). One direction: Outbound -> protocol.
        if self._closing:
            return  # closing anyway, with its own code: not counted as a slow consumer
        self.factory.registry.slowConsumerCloses += 1
        log.warn("closing slow consumer {socketId}", socketId=self.socketId)
        self.closeWith(CLOSE_SLOW_CONSUMER, "too much unsent data: reconnect later")

    def send(self, payload: bytes) -> None:
        """Write one JSON frame to this client: every reply goes through here."""
        if self.outbound is not None:
            self.outbound.send(wsTextFrame(payload))

    def _error(self, code: int, message: str) -> None:
        self.factory.registry.protocolErrors += 1
        self.send(frames.error(code, message))

    # -- frames --------------------------------------------------------------------------------

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        # The unmasker of the frame just read (~0.5 KiB, a cffi object), kept by Autobahn until
        # the next frame makes its own: idle connections need none.
        self.current_frame_masker = None
        if self.outbound is None or self._closing:
            return
        try:
            frame = parseClientFrame(payload, isBinary, self.factory.settings.maxFrameBytes)
            handler = self.handlers.get(frame.event)
            if handler is None:
                if not frame.event.startswith("client-"):
                    raise ProtocolError(ERR_MALFORMED, f"unknown event {frame.event!r}")
                handler = PushServerProtocol.handleClientEvent
            handler(self, frame)
        except ProtocolError as e:
            self._error(e.code, e.message)

    def handlePing(self, frame: ClientFrame) -> None:
        self.send(frames.PONG)

    def handlePong(self, frame: ClientFrame) -> None:
        """An answer to a server pusher:ping; receiving it already counted as life."""

    def handleSubscribe(self, frame: ClientFrame) -> None:
        req = frames.subscribeRequest(frame)
        channel = req.channel
        f = self.factory
        if f.registry.isSubscribed(self, channel):
            self._subscribed(channel)
            return
        if channel in self._joining:
            return  # answered when the member count comes
        if isServerToUser(channel):
            # pusher-js subscribes to its user channel after sign-in; it is already joined then.
            self.send(frames.subscriptionError(channel, "AuthError", "sign in as this user", 403))
            return
        app = self.currentApp()
        limit = app.maxSubscriptionsPerConnection or f.settings.maxSubscriptions
        if len(f.registry.channelsOf(self)) + len(self._joining) >= limit:
            self._limitReached(channel, f"at most {limit} subscriptions per connection")
            return
        if len(channel) > app.maxChannelNameLength:
            self._limitReached(
                channel, f"channel names are at most {app.maxChannelNameLength} characters"
            )
            return
        kind = channelKind(channel)
        member = None
        if kind == "presence":
            if req.channelData is not None:
                try:
                    member = frames.presenceMember(req.channelData)
                except ProtocolError as e:
                    self.send(frames.subscriptionError(channel, "AuthError", e.message, 401))
                    return
            elif self.userId is not None:
                member = Member(self.userId, self.userInfo)
            else:
                self.send(
                    frames.subscriptionError(
                        channel, "AuthError", "presence channels need channel_data", 401
                    )
                )
                return
        if kind in ("private", "private-encrypted", "presence") and not verifyChannelAuth(
            app, self.socketId, channel, req.auth, req.channelData
        ):
            self.send(frames.subscriptionError(channel, "AuthError", "invalid signature", 401))
            return
        if member is not None:
            self._joinPresence(channel, member, app.maxPresenceMembers)
            return
        self._subscribe(channel, None)

    def _subscribe(self, channel: str, member: Member | None) -> None:
        f = self.factory
        if self._counters is not None:
            self._counters.subscriptions += 1
        # subscription_succeeded waits until the broker has the subscription (a round trip to
        # Redis with --redis; at once in-process), so every publish accepted after it arrives.
        d = f.hub.subscribe(self, channel, member)
        d.addCallback(lambda _: self._subscribed(channel))

    def _joinPresence(self, channel: str, member: Member, limit: int) -> None:
        """
        Join presence C{channel} unless it has C{limit} members already (counted over the
        cluster with --redis: two joining at once on two nodes may both get in).
        """

        def counted(present: dict[str, Any]) -> None:
            if channel not in self._joining:
                return  # unsubscribed meanwhile
            self._joining -= {channel}
            registry = self.factory.registry
            if self._closing or registry.connection(self.socketId) is not self:
                return  # closing, or gone meanwhile
            if registry.isSubscribed(self, channel):
                self._subscribed(channel)
            elif member.userId not in present and len(present) >= limit:
                self._limitReached(channel, f"presence channels have at most {limit} members")
            else:
                self._subscribe(channel, member)

        def failed(f: Failure) -> None:
            self._joining -= {channel}
            log.failure("joining {channel}", f, channel=channel)

        self._joining |= {channel}
        self.factory.hub.presenceMembers(self.appId, channel).addCallback(counted).addErrback(
            failed
        )

    def _limitReached(self, channel: str, message: str) -> None:
        if self._counters is not None:
            self._counters.refusedSubscriptions += 1
        self.send(frames.subscriptionError(channel, "LimitReached", message, 403))

    def _subscribed(self, channel: str) -> Deferred[None]:
        hub = self.factory.hub
        members: Deferred[dict[str, Any] | None] = succeed(None)
        if channelKind(channel) == "presence":
            members = hub.presenceMembers(self.appId, channel)  # type: ignore[assignment]  # Deferred is invariant; the members or None

        def reply(present: dict[str, Any] | None) -> None:
            if not self.factory.registry.isSubscribed(self, channel):
                return  # unsubscribed or gone meanwhile
            presence = None if present is None else frames.presenceData(present)
            self.send(frames.subscriptionSucceeded(channel, presence))
            if isCacheChannel(channel):
                cached = hub.cachedEvent(self.appId, channel)
                if cached is None:
                    hub.cacheMiss(self.appId, channel)
                self.send(cached if cached is not None else frames.cacheMiss(channel))

        def failed(f: Failure) -> None:
            log.failure("answering the subscription to {channel}", f, channel=channel)

        return members.addCallback(reply).addErrback(failed)

    def handleUnsubscribe(self, frame: ClientFrame) -> None:
        channel = frames.unsubscribeChannel(frame)
        self._joining -= {channel}
        if not isServerToUser(channel):
            self.factory.hub.unsubscribe(self, channel)

    def handleSignin(self, frame: ClientFrame) -> None:
        req = frames.signinRequest(frame)
        if not verifyUserAuth(self.currentApp(), self.socketId, req.auth, req.userData):
            raise ProtocolError(ERR_NOT_ALLOWED, "invalid sign-in signature")
        if self.userId is not None and self.userId != req.userId:
            raise ProtocolError(ERR_NOT_ALLOWED, "already signed in as another user")
        self.userId, self.userInfo = req.userId, req.userInfo
        self._cancelAuthTimer()
        self.factory.hub.signin(self, req.userId)
        self.send(frames.signinSuccess(req.userData))
        watchlist = frames.watchlistOf(req.userData)
        if watchlist:
            self.factory.hub.watch(self, watchlist).addCallback(self._watching)

    def _watching(self, online: list[str]) -> None:
        if online:
            self.send(
                frames.encodeEvent(
                    frames.WATCHLIST_EVENT, None, frames.watchlistEventsData("online", online)
                )
            )

    def handleClientEvent(self, frame: ClientFrame) -> None:
        data = frames.clientEventData(frame)
        channel = frame.channel
        assert channel is not None
        f = self.factory
        if not frames.takesClientEvents(channel):
            raise ProtocolError(
                ERR_NOT_ALLOWED, "client events go only on private and presence channels"
            )
        if not f.registry.isSubscribed(self, channel):
            raise ProtocolError(ERR_NOT_ALLOWED, f"not subscribed to {channel}")
        now = f.clock.seconds()
        rate = float(self._clientEventRate())
        self._tokens = min(rate, self._tokens + (now - self._tokensAt) * rate)
        self._tokensAt = now
        if self._tokens < 1.0:
            f.registry.rateLimited += 1
            if self._counters is not None:
                self._counters.clientEventsRateLimited += 1
            raise ProtocolError(ERR_RATE_LIMIT, f"over {rate:g} client events per second")
        self._tokens -= 1.0
        userId = None
        if channelKind(channel) == "presence":
            userId = f.registry.presenceUserId(self, channel)
        f.registry.clientEvents += 1
        if self._counters is not None:
            self._counters.clientEvents += 1
        f.hub.clientEvent(self, channel, frame.event, data, userId)


PushServerProtocol.handlers = {
    "pusher:ping": PushServerProtocol.handlePing,
    "pusher:pong": PushServerProtocol.handlePong,
    "pusher:subscribe": PushServerProtocol.handleSubscribe,
    "pusher:unsubscribe": PushServerProtocol.handleUnsubscribe,
    "pusher:signin": PushServerProtocol.handleSignin,
}


class PushServerFactory(WebSocketServerFactory):
    """Builds L{PushServerProtocol}s sharing the apps, hub, registry, clock and settings."""

    protocol = PushServerProtocol  # type: ignore[assignment]  # Autobahn's protocol attribute takes any subclass

    def __init__(
        self, apps: Apps, hub: Hub, registry: Registry, clock: IReactorTime, settings: PushSettings
    ) -> None:
        super().__init__(server="pushsvc")
        self.apps = apps
        self.hub = hub
        self.registry = registry
        self.clock = clock
        self.settings = settings
        self.keepalive = Keepalive(
            clock, settings.pingInterval, settings.pongTimeout, registry.openConnections
        )
        # Set only while the resource hands over a handshake that is over a connection cap:
        # the handshake completes, then the connection is closed with 4100 and this reason.
        self.overCap: str | None = None
        self.client: str | None = None  # the upgrade request's client address (render)
        self.appStats = AppStats()  # the service shares its own (with the HTTP API)
        self.setProtocolOptions(
            maxFramePayloadSize=settings.maxFrameBytes,
            maxMessagePayloadSize=settings.maxFrameBytes,
            autoPingInterval=0,  # the Keepalive pings, on the clock passed in
            openHandshakeTimeout=10,
            closeHandshakeTimeout=2,
            failByDrop=False,  # protocol violations get a close frame with the code (1007, 1009)
            webStatus=False,  # a plain GET gets a 426, not a page naming the library's version
        )

    def overQuota(self, app: App, local: int) -> bool:
        """
        Whether one more connection of C{app}, which has C{local} open here, is over its
        C{max_connections}: counted over the cluster with --redis, from the other nodes' counts
        of the last heartbeat (no Redis round trip a connection; the overshoot under a race is
        at most what the other nodes accepted within one heartbeat, a second).
        """
        limit = app.maxConnections
        return bool(limit) and local + self.hub.state.connectionsElsewhere(app.id) >= limit

    def closeApps(self, codes: dict[str, tuple[int, str]]) -> int:
        """
        Close every open connection of the apps in C{codes} (app id -> close code and reason),
        as a reload does for removed (4001) and disabled (4003) apps; other apps' connections are
        not touched. @return: how many were closed.
        """
        closing: list[Any] = [c for c in self.registry.openConnections() if c.appId in codes]
        for conn in closing:
            code, reason = codes[conn.appId]
            try:
                conn.send(frames.error(code, reason))
                conn.closeWith(code, reason)
            except Exception:
                log.failure("closing {socketId}", socketId=conn.socketId)
        return len(closing)

    def setProtocolOptions(self, *args: Any, **kwargs: Any) -> None:
        """
        Autobahn's options, kept as class attributes of a protocol class of this factory: Autobahn
        copies every option it finds missing onto each connection (~40 instance attributes, a
        dict twice the size); present on the class, they are stored once.
        """
        super().setProtocolOptions(*args, **kwargs)
        self.protocol = optionsOnClass(self, PushServerProtocol)  # type: ignore[assignment]  # Autobahn's protocol attribute takes any subclass


def makeAppFactory(
    apps: Apps, hub: Hub, registry: Registry, clock: IReactorTime, settings: PushSettings
) -> PushServerFactory:
    return PushServerFactory(apps, hub, registry, clock, settings)


def makeAppResource(
    apps: Apps, hub: Hub, registry: Registry, clock: IReactorTime, settings: PushSettings
) -> IResource:
    """The resource to mount at C{/app}: C{/app/{key}} is the WebSocket."""
    return PushWebSocketResource(makeAppFactory(apps, hub, registry, clock, settings))


class PushWebSocketResource(WebSocketResource):
    """
    C{/app/{key}}: hands the connection to a L{PushServerProtocol}, then lets go of what
    twisted.web built for the upgrade request (its HTTPChannel, Request and headers), which
    would otherwise live as long as the WebSocket: the channel's idle timer and the site's
    record of open channels keep them reachable, a few KiB per connection.
    """

    def render(self, request: Any) -> Any:
        channel = request.channel
        transport = channel.transport
        httpProtocol = getattr(transport, "protocol", None)
        factory: PushServerFactory = self._factory
        factory.overCap = getattr(request, "refusal", None)  # see PushRequest._refusedOverCap
        if factory.settings.logWebSockets:
            factory.client = clientOf(request).address  # for the open and close log lines
        try:
            result = super().render(request)  # the handshake is handled within
        finally:
            factory.overCap = None
            factory.client = None
        if transport is not None and channel.transport is None:  # the WebSocket took it over
            channel.setTimeout(None)
            forget = getattr(request.site, "forgetChannel", None)
            if forget is not None:
                forget(httpProtocol)
            # The channel and its request refer to each other (requests, request.channel): a
            # cycle of some 40 objects per connection left for the collector. The request never
            # finishes, and nothing reads the channel's list again.
            requests = getattr(channel, "requests", None)
            if requests:
                requests.clear()
        return result
