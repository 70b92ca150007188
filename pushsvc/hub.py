"""
The hub: every publish goes hub.publish -> one envelope -> broker -> (every process) hub.receive
-> one WebSocket frame -> registry.deliver. Client events and presence member events take the same
path, so they reach the subscribers on other processes once a cluster-wide broker is plugged in.

Questions about channels and presence go through the hub too; the hub hands them to its cluster
state (L{pushsvc.local} by default, L{pushsvc.redis.state} for every process with C{--redis}).
The cluster state also decides when a presence member is new or gone across every process.

When the broker says it lost its link (L{IBroker.setHealthListener}), this process may have missed
publishes that were answered 2xx elsewhere: the hub closes every local connection with 4200 so the
clients reconnect and catch up, and L{Hub.acceptingConnections} is false (new connections are
refused with 4100) until the link is back. A broker that cannot carry publishes from this process
but still brings everyone else's (Redis's command connection lost or stalled) makes publishes
fail (503) and C{health} say so, and leaves the clients alone.

Cache channels: every process remembers the last event it receives on a cache channel. A broker
that reaches other processes (Redis) also keeps it where every process can read it, written with
the publish; a subscribe reads it from there before the subscription succeeds.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import (
    Deferred,
    DeferredList,
    FirstError,
    gatherResults,
    maybeDeferred,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pushsvc.apps import App
from pushsvc.fanout.registry import Registry, Subscriber
from pushsvc.frames import (
    CLOSE_SHUTDOWN,
    CLOSE_TERMINATED,
    SERVER_TO_USER_PREFIX,
    WATCHLIST_EVENT,
    Member,
    encodeEvent,
    isCacheChannel,
    isServerToUser,
    memberAddedData,
    memberRemovedData,
    serverToUserChannel,
    watchlistChannel,
    watchlistEventsData,
)
from pushsvc.interfaces import (
    CACHE_TTL,
    ChannelInfo,
    IBroker,
    IClusterState,
    IHub,
    Members,
    UserInfo,
)
from pushsvc.local import LocalState
from pushsvc.webhooks.sender import WebhookEvents

log = Logger()

# Envelope kinds: what hub.receive does with a message from the broker.
KIND_EVENT = "e"  # an app's event (HTTP API, chat): cached on cache channels
KIND_CLIENT = "c"  # a client event relayed from one connection: cached on cache channels
KIND_MEMBER = "m"  # pusher_internal:member_added / member_removed
KIND_TERMINATE = "t"  # close the connections on #server-to-user-{id}
KIND_WATCHLIST = "w"  # watchlist online/offline: a frame with no channel, to #watchlist-{id}

MAX_CACHED_CHANNELS = 10000
# Each part of a socket id: 16 digits, never a leading zero (about 53 random bits).
SOCKET_ID_LOW = 10**15
SOCKET_ID_SPAN = 9 * 10**15


def encodeEnvelope(
    kind: str,
    appId: str,
    channel: str,
    event: str,
    data: str | None,
    exceptSocketId: str | None = None,
    userId: str | None = None,
) -> bytes:
    return json.dumps(
        [kind, appId, channel, event, data, exceptSocketId, userId], separators=(",", ":")
    ).encode("utf-8")


def randomSocketId() -> str:
    """C{digits.digits}, both parts drawn from L{secrets}."""
    return (
        f"{secrets.randbelow(SOCKET_ID_SPAN) + SOCKET_ID_LOW}."
        f"{secrets.randbelow(SOCKET_ID_SPAN) + SOCKET_ID_LOW}"
    )


def _none(_: object) -> None:
    return None


def _firstFailure(f: Failure) -> Failure:
    if isinstance(f.value, FirstError):
        sub: Failure = f.value.subFailure
        return sub
    return f


@implementer(IHub)
class Hub:
    """
    Publishes through C{broker} and delivers what the broker brings back through C{registry}.
    """

    def __init__(
        self,
        registry: Registry,
        broker: IBroker,
        clock: IReactorTime,
        state: IClusterState | None = None,
    ) -> None:
        self.registry = registry
        self.broker = broker
        self.clock = clock
        broker.setReceiver(self.receive)
        broker.setHealthListener(self._brokerHealthChanged)
        # This process's id in the cluster state (Redis): random, and no part of any socket id,
        # so a socket id says nothing about which node holds it.
        self.nodeId = str(secrets.randbelow(9 * 10**17) + 10**17)
        self.state: IClusterState = state if state is not None else LocalState(registry)
        self.state.attach(self.nodeId, self)
        # (app, cache channel) -> (frame payload, when); insertion order is age order.
        self._cache: dict[tuple[str, str], tuple[bytes, float]] = {}
        # The envelope publish just encoded and its fields: the in-process broker hands the same
        # bytes straight back to receive, which then need not decode them (L{receive}).
        self._sent: tuple[bytes, list[Any]] | None = None
        self._linkLost = False  # the broker lost its link since it last had it
        # Hears channel_occupied, member_added, client events... (the service sets it).
        self.webhooks: WebhookEvents | None = None
        # Hears cluster-wide subscription counts (pushsvc.counts; the service sets it).
        self.counts: Callable[[str, str, int], None] | None = None

    def newSocketId(self) -> str:
        """
        A new socket id, Pusher's C{digits.digits}: both parts 16 random digits from
        L{secrets}, so neither can be guessed from another connection's id, and none that a
        connection of this process holds now.
        """
        while True:
            socketId = randomSocketId()
            if self.registry.connection(socketId) is None:
                return socketId

    # -- publishing ----------------------------------------------------------------------------

    def _send(
        self, appId: str, channel: str, envelope: bytes, cache: bytes | None = None
    ) -> Deferred[None]:
        if cache is None:
            return maybeDeferred(self.broker.publish, appId, channel, envelope)
        return maybeDeferred(self.broker.publish, appId, channel, envelope, cache)

    @staticmethod
    def _cacheFrame(channel: str, event: str, data: str, userId: str | None = None) -> bytes | None:
        """The frame a cache channel keeps as its last event (None on other channels)."""
        return encodeEvent(event, channel, data, userId) if isCacheChannel(channel) else None

    def publish(
        self,
        app: App,
        channels: Iterable[str],
        event: str,
        data: str,
        exceptSocketId: str | None = None,
    ) -> Deferred[None]:
        """
        Publish C{event} on every one of C{channels}. Fires with None once the broker took all
        of them; fails with L{BrokerUnavailable} (or what the broker failed with).
        """
        ds = [self._sendEvent(app.id, channel, event, data, exceptSocketId) for channel in channels]
        if len(ds) == 1:  # nearly every publish: no DeferredList to gather one result
            return ds[0].addCallback(_none)
        d = gatherResults(ds, consumeErrors=True)
        d.addErrback(_firstFailure)
        return d.addCallback(_none)

    def _sendEvent(
        self, appId: str, channel: str, event: str, data: str, exceptSocketId: str | None
    ) -> Deferred[None]:
        fields: list[Any] = [KIND_EVENT, appId, channel, event, data, exceptSocketId, None]
        envelope = encodeEnvelope(*fields)
        self._sent = (envelope, fields)
        try:
            return self._send(appId, channel, envelope, self._cacheFrame(channel, event, data))
        finally:
            self._sent = None

    def clientEvent(
        self, conn: Subscriber, channel: str, event: str, data: str, userId: str | None
    ) -> Deferred[None]:
        """Relay a client event to every subscriber of C{channel} but C{conn}."""
        envelope = encodeEnvelope(
            KIND_CLIENT, conn.appId, channel, event, data, conn.socketId, userId
        )
        cache = self._cacheFrame(channel, event, data, userId)
        if self.webhooks is not None:
            self.webhooks.clientEvent(conn.appId, channel, event, data, conn.socketId, userId)
        return self._logged(self._send(conn.appId, channel, envelope, cache), "client event")

    def sendInternal(self, appId: str, channel: str, event: str, data: str) -> None:
        """Send a C{pusher_internal:} event to every subscriber of C{channel}, everywhere."""
        self._internal(appId, channel, event, data, None)

    def _internal(
        self, appId: str, channel: str, event: str, data: str, exceptSocketId: str | None
    ) -> None:
        envelope = encodeEnvelope(KIND_MEMBER, appId, channel, event, data, exceptSocketId)
        self._logged(self._send(appId, channel, envelope), event)

    def announceMember(
        self,
        appId: str,
        channel: str,
        userId: str,
        userInfo: UserInfo,
        exceptSocketId: str | None = None,
    ) -> None:
        """
        Tell every subscriber of presence C{channel}, on every process, that C{userId} came
        (called once for the whole cluster: the cluster state decided it), and the webhooks.
        """
        if self.webhooks is not None:
            self.webhooks.memberAdded(appId, channel, userId)
        self._internal(
            appId,
            channel,
            "pusher_internal:member_added",
            memberAddedData(userId, userInfo),
            exceptSocketId,
        )

    def announceMemberGone(
        self, appId: str, channel: str, userId: str, exceptSocketId: str | None = None
    ) -> None:
        """Tell every subscriber of presence C{channel} that C{userId} has no connection left
        (once for the whole cluster), and the webhooks."""
        if self.webhooks is not None:
            self.webhooks.memberRemoved(appId, channel, userId)
        self._internal(
            appId,
            channel,
            "pusher_internal:member_removed",
            memberRemovedData(userId),
            exceptSocketId,
        )

    def announceOccupied(self, appId: str, channel: str) -> None:
        """C{channel} has its first subscriber in the cluster (the cluster state decided it)."""
        if channel.startswith("#"):
            self.userOnline(appId, channel, True)
        elif self.webhooks is not None:
            self.webhooks.occupied(appId, channel)

    def announceVacated(self, appId: str, channel: str) -> None:
        """C{channel} has no subscriber left in the cluster."""
        if channel.startswith("#"):
            self.userOnline(appId, channel, False)
        elif self.webhooks is not None:
            self.webhooks.vacated(appId, channel)

    def announceCount(self, appId: str, channel: str, count: int) -> None:
        """C{channel}'s cluster-wide subscription count is now C{count}."""
        if self.counts is not None and not channel.startswith(("#", "presence-")):
            self.counts(appId, channel, count)

    def userOnline(self, appId: str, channel: str, online: bool) -> None:
        """
        A reserved channel became occupied or vacated: for C{#server-to-user-{id}}, user C{id}
        has its first connection signed in anywhere, or its last went; tell its watchers
        (C{#watchlist-{id}}, on every process) with C{pusher_internal:watchlist_events}.
        """
        if not isServerToUser(channel):
            return
        userId = channel[len(SERVER_TO_USER_PREFIX) :]
        data = watchlistEventsData("online" if online else "offline", [userId])
        envelope = encodeEnvelope(
            KIND_WATCHLIST, appId, watchlistChannel(userId), WATCHLIST_EVENT, data
        )
        self._logged(self._send(appId, watchlistChannel(userId), envelope), WATCHLIST_EVENT)

    def cacheMiss(self, appId: str, channel: str) -> None:
        """A subscriber of cache channel C{channel} found no event kept."""
        if self.webhooks is not None:
            self.webhooks.cacheMiss(appId, channel)

    def _logged(self, d: Deferred[Any], what: str) -> Deferred[None]:
        def failed(f: Failure) -> None:
            log.error(
                "broker failed to carry {what}: {error}", what=what, error=f.getErrorMessage()
            )

        return d.addCallbacks(lambda _: None, failed)

    def receive(self, envelope: bytes) -> None:
        """A message from the broker: encode its frame once and deliver it here."""
        sent = self._sent
        try:
            if sent is not None and sent[0] is envelope:  # handed straight back: not decoded
                kind, appId, channel, event, data, exceptSocketId, userId = sent[1]
            else:
                kind, appId, channel, event, data, exceptSocketId, userId = json.loads(envelope)
        except (ValueError, TypeError):
            log.error("dropping a malformed envelope from the broker")
            return
        if kind == KIND_TERMINATE:
            self.registry.closeChannel(
                appId, channel, CLOSE_TERMINATED, "connections terminated by the app"
            )
            return
        if kind == KIND_WATCHLIST:
            self.registry.deliver(appId, channel, encodeEvent(event, None, data), None)
            return
        payload = encodeEvent(event, channel, data, userId)
        if kind != KIND_MEMBER and isCacheChannel(channel):
            self._remember(appId, channel, payload)
        self.registry.deliver(appId, channel, payload, exceptSocketId)

    # -- cache channels ------------------------------------------------------------------------

    def _remember(self, appId: str, channel: str, payload: bytes, at: float | None = None) -> None:
        key = (appId, channel)
        self._cache.pop(key, None)
        self._cache[key] = (payload, self.clock.seconds() if at is None else at)
        if len(self._cache) > MAX_CACHED_CHANNELS:
            del self._cache[next(iter(self._cache))]

    def _recall(self, appId: str, channel: str) -> Deferred[None]:
        """
        Read the last event of cache channel C{channel} that the broker keeps for every process
        (if any) into this process's cache, unless this process received a younger one itself.
        Fires with None; never fails (this process's cache answers meanwhile).
        """

        def got(entry: tuple[bytes, float] | None) -> None:
            if entry is None:
                return
            payload, left = entry
            at = self.clock.seconds() - (CACHE_TTL - left)
            mine = self._cache.get((appId, channel))
            if mine is None or mine[1] < at:
                self._remember(appId, channel, payload, at)

        def failed(f: Failure) -> None:
            log.warn(
                "reading the cached event of {channel} failed: {error}",
                channel=channel,
                error=f.getErrorMessage(),
            )

        return maybeDeferred(self.broker.cached, appId, channel).addCallbacks(got, failed)

    def cachedEvent(self, appId: str, channel: str) -> bytes | None:
        """The last event frame of cache channel C{channel} if younger than 30 minutes."""
        entry = self._cache.get((appId, channel))
        if entry is None:
            return None
        if self.clock.seconds() - entry[1] > CACHE_TTL:
            del self._cache[(appId, channel)]
            return None
        return entry[0]

    # -- subscriptions -------------------------------------------------------------------------

    def subscribe(
        self, conn: Subscriber, channel: str, member: Member | None = None
    ) -> Deferred[None]:
        """
        Subscribe C{conn}: the broker hears of the channel's first local subscriber, the cluster
        state of the new count, the other members of a presence channel of a user's first
        connection in the cluster.

        On a cache channel the last event kept by the broker (Redis) is read into this process's
        cache after that, for L{cachedEvent}.

        @return: a Deferred that fires with None (never fails) once the broker and the cluster
            state have it, so publishes accepted from then on reach C{conn} (at once with the
            in-process broker).
        """
        first, userFirst = self.registry.subscribe(conn, channel, member)
        appId = conn.appId
        ds: list[Deferred[Any]] = []
        if first:
            ds.append(
                self._logged(maybeDeferred(self.broker.subscribe, appId, channel), "subscribe")
            )
        if isCacheChannel(channel):
            # The kept event is read once the broker has the subscription, so an event published
            # meanwhile is read here or delivered (or both), never neither.
            subscribed = ds.pop() if first else succeed(None)
            ds.append(subscribed.addCallback(lambda _: self._recall(appId, channel)))
        ds.append(self.state.counted(appId, channel))
        if userFirst and member is not None:

            def joined(new: bool) -> None:
                if new:
                    self.announceMember(
                        appId, channel, member.userId, member.userInfo, conn.socketId
                    )

            ds.append(
                self._logged(
                    self.state.joined(appId, channel, member.userId, member.userInfo).addCallback(
                        joined
                    ),
                    "member_added",
                )
            )
        if len(ds) == 1:
            return ds[0].addCallback(lambda _: None)
        return gatherResults(ds).addBoth(lambda _: None)

    def unsubscribe(self, conn: Subscriber, channel: str) -> None:
        last, userLeft = self.registry.unsubscribe(conn, channel)
        appId = conn.appId
        if userLeft is not None:

            def left(gone: bool) -> None:
                if gone:
                    self.announceMemberGone(appId, channel, userLeft, conn.socketId)

            self._logged(
                self.state.left(appId, channel, userLeft).addCallback(left), "member_removed"
            )
        self.state.counted(appId, channel)
        if last:
            self._logged(maybeDeferred(self.broker.unsubscribe, appId, channel), "unsubscribe")

    def signin(self, conn: Subscriber, userId: str) -> None:
        """C{conn} is signed in as C{userId}: it gets what is sent to C{#server-to-user-{id}}."""
        self.subscribe(conn, serverToUserChannel(userId))

    def watch(self, conn: Subscriber, userIds: list[str]) -> Deferred[list[str]]:
        """
        C{conn} (signed in with a C{watchlist}) hears when each of C{userIds} comes online or
        goes offline anywhere. Fires with those of them online now (in the whole cluster;
        never fails: a user whose state cannot be read is left out).
        """
        appId = conn.appId
        subscribed = [self.subscribe(conn, watchlistChannel(u)) for u in userIds]

        def online(info: ChannelInfo) -> bool:
            return info.occupied

        def ask(_: object) -> Deferred[list[tuple[bool, Any]]]:
            asks = [
                self.state.channelInfo(appId, serverToUserChannel(u)).addCallback(online)
                for u in userIds
            ]
            return DeferredList(asks, consumeErrors=True)

        def which(results: list[tuple[bool, Any]]) -> list[str]:
            return [u for u, (ok, on) in zip(userIds, results, strict=True) if ok and on]

        d: Deferred[Any] = DeferredList(subscribed, consumeErrors=True)
        return d.addCallback(ask).addCallback(which)

    def connect(self, conn: Subscriber) -> None:
        """C{conn} is open (it has its socket id and outbound): it may now subscribe."""
        self.registry.addConnection(conn)

    def disconnect(self, conn: Subscriber) -> None:
        """C{conn} is gone: leave every channel (presence members are told) and forget it."""
        for channel in self.registry.channelsOf(conn):
            try:
                self.unsubscribe(conn, channel)
            except Exception:
                log.failure("unsubscribing {channel}", channel=channel)
        self.registry.removeConnection(conn)

    def presenceMembers(self, appId: str, channel: str) -> Deferred[Members]:
        """
        Fires with user id -> user info of the members of presence C{channel} on every process
        (only this process's while the cluster state cannot be reached).
        """

        def local(f: Failure) -> dict[str, Any]:
            log.warn(
                "presence members of {channel} from this process only: {error}",
                channel=channel,
                error=f.getErrorMessage(),
            )
            return self.registry.members(appId, channel)

        return self.state.members(appId, channel).addErrback(local)

    # -- IHub questions ------------------------------------------------------------------------

    def channelInfo(self, app: App, channel: str) -> Deferred[ChannelInfo]:
        """Fires with the L{ChannelInfo} of C{channel}; fails with L{BrokerUnavailable}."""
        return self.state.channelInfo(app.id, channel)

    def occupiedChannels(self, app: App, prefix: str | None) -> Deferred[dict[str, ChannelInfo]]:
        """Fires with channel -> L{ChannelInfo} of the occupied channels starting with C{prefix}."""
        return self.state.occupied(app.id, prefix)

    def cacheInfo(self, app: App, channel: str) -> Deferred[dict[str, Any] | None]:
        """Fires with the event kept for cache channel C{channel} (event, data, ttl) or None."""

        def kept(_: object) -> dict[str, Any] | None:
            frame = self.cachedEvent(app.id, channel)
            if frame is None:
                return None
            left = CACHE_TTL - (self.clock.seconds() - self._cache[(app.id, channel)][1])
            event = json.loads(frame)
            return {"event": event["event"], "data": event.get("data"), "ttl": max(int(left), 0)}

        return self._recall(app.id, channel).addCallback(kept)

    def presenceUserIds(self, app: App, channel: str) -> Deferred[list[str]]:
        """Fires with the user ids present on C{channel}; fails with L{BrokerUnavailable}."""
        return self.state.members(app.id, channel).addCallback(list)

    def terminateUserConnections(self, app: App, userId: str) -> Deferred[None]:
        """Close (4009) every connection signed in as C{userId}; fires once the broker took it."""
        channel = serverToUserChannel(userId)
        envelope = encodeEnvelope(KIND_TERMINATE, app.id, channel, "", None)
        return self._send(app.id, channel, envelope)

    def claim(self, app: App, key: str, ttl: float) -> Deferred[bool]:
        """Fires with True the first time C{key} is claimed within C{ttl}, on any process."""
        return maybeDeferred(self.broker.claim, app.id, key, ttl)

    # -- broker health -------------------------------------------------------------------------

    @property
    def acceptingConnections(self) -> bool:
        """
        False while the broker cannot deliver what other processes publish: a new WebSocket
        connection is refused (4100, try again later) rather than subscribed to channels whose
        events would not reach it.
        """
        return bool(self.broker.linked)

    def _brokerHealthChanged(self, linked: bool) -> None:
        if linked:
            if self._linkLost:
                self._linkLost = False
                log.info("broker link back: accepting WebSocket connections again")
            return
        self._linkLost = True
        count = self.registry.connectionCount
        if count:
            log.warn(
                "broker link lost: closing {n} WebSocket connections with 4200 so they "
                "reconnect and catch up",
                n=count,
            )
        # The Deferred fires once they are all gone; nothing waits for it here.
        self.registry.closeAll(CLOSE_SHUTDOWN, "lost the link to the other nodes: reconnect")

    def health(self) -> dict[str, str]:
        return {"broker": "ok" if self.broker.healthy else self.broker.status}
