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
from pushsvc.fanout.registry import Outbound, Registry
from pushsvc.frames import (
    CLOSE_APP_DISABLED,
    CLOSE_BAD_PATH,
    CLOSE_BAD_VERSION,
    CLOSE_NO_VERSION,
    CLOSE_OVER_CAPACITY,
    CLOSE_SLOW_CONSUMER,
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


def _refusal(request: ConnectionRequest, apps: Apps) -> tuple[App | None, int, str]:
    """The app of a handshake, or None with the close code and reason that refuse it."""
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
        return None, CLOSE_APP_DISABLED, "the app is disabled"
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
            self.factory.registry.untrack(self)

    def onConnect(self, request: ConnectionRequest) -> None:
        f = self.factory
        origin = request.headers.get("origin")
        if f.settings.allowedOrigins and origin and origin not in f.settings.allowedOrigins:
            raise ConnectionDeny(403, "origin not allowed")
        app, code, reason = _refusal(request, f.apps)
        if app is None:
            self._refused = (code, reason)
        else:
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
        self._tokens = float(f.settings.clientEventsPerSecond)
        self._tokensAt = self.lastSeen
        f.hub.connect(self)
        f.keepalive.wake()
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
        super().dataReceived(data)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.outbound is None:
            return
        self.outbound.drop()
        f = self.factory
        f.hub.disconnect(self)
        f.keepalive.rest()
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
        if isServerToUser(channel):
            # pusher-js subscribes to its user channel after sign-in; it is already joined then.
            self.send(frames.subscriptionError(channel, "AuthError", "sign in as this user", 403))
            return
        if len(f.registry.channelsOf(self)) >= f.settings.maxSubscriptions:
            message = f"at most {f.settings.maxSubscriptions} subscriptions per connection"
            self.send(frames.subscriptionError(channel, "LimitReached", message, 403))
            return
        kind = channelKind(channel)
        member = None
        assert self.app is not None
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
            self.app, self.socketId, channel, req.auth, req.channelData
        ):
            self.send(frames.subscriptionError(channel, "AuthError", "invalid signature", 401))
            return
        # subscription_succeeded waits until the broker has the subscription (a round trip to
        # Redis with --redis; at once in-process), so every publish accepted after it arrives.
        d = f.hub.subscribe(self, channel, member)
        d.addCallback(lambda _: self._subscribed(channel))

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
                self.send(cached if cached is not None else frames.cacheMiss(channel))

        def failed(f: Failure) -> None:
            log.failure("answering the subscription to {channel}", f, channel=channel)

        return members.addCallback(reply).addErrback(failed)

    def handleUnsubscribe(self, frame: ClientFrame) -> None:
        channel = frames.unsubscribeChannel(frame)
        if not isServerToUser(channel):
            self.factory.hub.unsubscribe(self, channel)

    def handleSignin(self, frame: ClientFrame) -> None:
        req = frames.signinRequest(frame)
        assert self.app is not None
        if not verifyUserAuth(self.app, self.socketId, req.auth, req.userData):
            raise ProtocolError(ERR_NOT_ALLOWED, "invalid sign-in signature")
        if self.userId is not None and self.userId != req.userId:
            raise ProtocolError(ERR_NOT_ALLOWED, "already signed in as another user")
        self.userId, self.userInfo = req.userId, req.userInfo
        self.factory.hub.signin(self, req.userId)
        self.send(frames.signinSuccess(req.userData))

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
        rate = float(f.settings.clientEventsPerSecond)
        self._tokens = min(rate, self._tokens + (now - self._tokensAt) * rate)
        self._tokensAt = now
        if self._tokens < 1.0:
            f.registry.rateLimited += 1
            raise ProtocolError(ERR_RATE_LIMIT, f"over {rate:g} client events per second")
        self._tokens -= 1.0
        userId = None
        if channelKind(channel) == "presence":
            userId = f.registry.presenceUserId(self, channel)
        f.registry.clientEvents += 1
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
        self.setProtocolOptions(
            maxFramePayloadSize=settings.maxFrameBytes,
            maxMessagePayloadSize=settings.maxFrameBytes,
            autoPingInterval=0,  # the Keepalive pings, on the clock passed in
            openHandshakeTimeout=10,
            closeHandshakeTimeout=2,
            failByDrop=False,  # protocol violations get a close frame with the code (1007, 1009)
            webStatus=False,  # a plain GET gets a 426, not a page naming the library's version
        )

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
        return result
