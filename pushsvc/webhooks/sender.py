"""
Sending an app's webhooks: debounce, batches per app and URL, durable retries.

    hub (occupied, member_added, client event...) -> L{WebhookSender}
      -> debounce: channel_vacated / member_removed wait C{debounce} seconds (3) and are dropped,
         with the channel_occupied / member_added that cancels them, if the channel or user is
         back meanwhile (a page reload is no leave + join)
      -> one L{_Target} per (app, URL): events gather into a batch of up to 20, or 250 ms
      -> the batch is saved in the store (L{IStore.saveWebhook}), then POSTed through
         L{WebhookSender.post} (one function, so a recorder can wrap it)
      -> 2xx: delivered, forgotten by the store. Anything else (a status, a refused connection,
         no answer within C{timeout}): retried after 1, 2, 4... seconds (at most 60), the same
         body and id, until C{retryFor} (5 minutes) after the batch was made; then dropped,
         logged and counted.

Each target has its own queue, bounded (C{maxQueue} batches: past it the oldest is dropped and
counted) and at most C{maxInFlight} POSTs at once, so a slow or dead receiver holds nothing of
any other app or URL, and nothing waits on the reactor thread. On start (L{resume}) the batches
the store kept are queued again; on stop the debounced events and gathered ones are written as
batches to the store before it closes, so a restart loses none (at least once: a receiver drops
duplicates by C{X-Pushsvc-Webhook-Id}).

Nothing here runs per delivered message: the hub calls in per subscription change, per presence
member change, per client event and per cache miss, and an app without webhooks costs one lookup.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from pushsvc.apps import App
from pushsvc.store.interface import IStore, PendingWebhook
from pushsvc.webhooks import format as fmt
from pushsvc.webhooks.format import WebhookEvent, WebhookTarget

log = Logger()

DEBOUNCE = 3.0  # seconds a vacated / member_removed waits for the channel or user to come back
BATCH_SIZE = 20  # events in one POST at most
BATCH_DELAY = 0.25  # seconds the first event of a batch waits for others
TIMEOUT = 5.0  # seconds a receiver has to answer
RETRY_FOR = 300.0  # seconds after a batch was made that it is retried
RETRY_FIRST = 1.0
RETRY_MAX = 60.0
MAX_QUEUE = 1000  # batches kept per app and URL
MAX_IN_FLIGHT = 4  # POSTs at once per app and URL
RESUME_LIMIT = 100_000  # batches read back from the store on start
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
MAX_RESPONSE_BYTES = 64 * 1024  # of a receiver's reply body read (and thrown away)

# post(url, body, headers) fires with the HTTP status; fails for no answer.
PostFunction = Callable[[str, bytes, dict[str, str]], Deferred[int]]


class WebhookEvents(Protocol):
    """What the hub tells the webhooks (L{WebhookSender}); each call is cheap and never fails."""

    def occupied(self, appId: str, channel: str) -> None: ...

    def vacated(self, appId: str, channel: str) -> None: ...

    def memberAdded(self, appId: str, channel: str, userId: str) -> None: ...

    def memberRemoved(self, appId: str, channel: str, userId: str) -> None: ...

    def clientEvent(
        self, appId: str, channel: str, event: str, data: str, socketId: str, userId: str | None
    ) -> None: ...

    def cacheMiss(self, appId: str, channel: str) -> None: ...


@dataclass
class WebhookFigures:
    """One app's webhook figures for C{/metrics}; the inside view labels them with the app id."""

    sent: int = 0  # batches a receiver accepted (2xx)
    failed: int = 0  # attempts that failed (status, refused, timeout)
    retried: int = 0  # attempts scheduled again after a failure
    dropped: int = 0  # batches given up: retries ran out, queue overflow, app gone
    queued: int = 0  # batches waiting or in flight now
    latencySum: float = 0.0  # seconds from a batch made to accepted, summed over L{sent}
    latencyBuckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))

    def observe(self, seconds: float) -> None:
        self.sent += 1
        self.latencySum += seconds
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.latencyBuckets[i] += 1


@dataclass
class _Batch:
    stored: PendingWebhook
    attempts: int = 0
    timer: IDelayedCall | None = None  # a retry waiting
    request: Deferred[int] | None = None  # a POST in flight


class _Target:
    """The queue of one app and URL: gathers events into batches and delivers them."""

    def __init__(self, sender: WebhookSender, appId: str, target: WebhookTarget) -> None:
        self.sender = sender
        self.appId = appId
        self.target = target
        self.where = fmt.describeURL(target.url)
        self.events: list[WebhookEvent] = []
        self.flushTimer: IDelayedCall | None = None
        self.batches: OrderedDict[str, _Batch] = OrderedDict()
        self.ready: deque[str] = deque()
        self.inFlight = 0

    def add(self, event: WebhookEvent) -> None:
        self.events.append(event)
        if len(self.events) >= self.sender.batchSize or self.sender.stopping:
            self.flush()
        elif self.flushTimer is None:
            self.flushTimer = self.sender.clock.callLater(self.sender.batchDelay, self.flush)

    def flush(self) -> Deferred[None]:
        """Make a batch of the events gathered; fires with None once the store has it."""
        if self.flushTimer is not None:
            if self.flushTimer.active():
                self.flushTimer.cancel()
            self.flushTimer = None
        events, self.events = self.events, []
        if not events:
            return succeed(None)
        now = self.sender.clock.seconds()
        body = fmt.encodeBody(int(self.sender.wallClock() * 1000), events)
        stored = PendingWebhook(uuid.uuid4().hex, self.appId, self.target.url, body, now)
        return self.sender.save(stored).addCallback(lambda _: self.queue(stored))

    def queue(self, stored: PendingWebhook) -> None:
        """Queue C{stored} for delivery, dropping the oldest batch past the bound."""
        if self.sender.stopping:
            return  # kept in the store; delivered after the restart
        self.batches[stored.id] = _Batch(stored)
        self.sender.figures(self.appId).queued += 1
        while len(self.batches) > self.sender.maxQueue:
            oldest = next(iter(self.batches))
            log.warn(
                "webhook queue of app {appId} for {url} is full: dropping batch {id}",
                appId=self.appId,
                url=self.where,
                id=oldest,
            )
            self.drop(oldest)
        self.ready.append(stored.id)
        self.pump()

    def drop(self, batchId: str) -> None:
        batch = self.batches.pop(batchId, None)
        if batch is None:
            return
        figures = self.sender.figures(self.appId)
        figures.queued -= 1
        figures.dropped += 1
        if batch.timer is not None and batch.timer.active():
            batch.timer.cancel()
        if batch.request is not None:
            batch.request.cancel()
        self.sender.forget(batchId)

    def pump(self) -> None:
        while self.inFlight < self.sender.maxInFlight and self.ready:
            batchId = self.ready.popleft()
            batch = self.batches.get(batchId)
            if batch is not None:
                self.attempt(batch)

    def attempt(self, batch: _Batch) -> None:
        sender = self.sender
        app = sender.appById(self.appId)
        if app is None:
            log.warn("app {appId} is gone: dropping its webhook batch", appId=self.appId)
            self.drop(batch.stored.id)
            return
        batch.timer = None
        headers = fmt.requestHeaders(
            app.key, app.secret, batch.stored.id, batch.stored.body, self.target.headers
        )
        self.inFlight += 1
        try:
            d = sender.post(self.target.url, batch.stored.body, headers)
        except Exception:
            d = fail()  # the exception being handled
        d.addTimeout(sender.timeout, sender.clock)
        batch.request = d

        def answered(status: int) -> None:
            batch.request = None
            self.inFlight -= 1
            if 200 <= status < 300:
                self.delivered(batch)
            else:
                self.failed(batch, f"status {status}")
            self.pump()

        def noAnswer(f: Failure) -> None:
            batch.request = None
            self.inFlight -= 1
            if batch.stored.id in self.batches:  # not dropped meanwhile
                self.failed(batch, f.getErrorMessage() or repr(f.value))
            self.pump()

        d.addCallbacks(answered, noAnswer)

    def delivered(self, batch: _Batch) -> None:
        if self.batches.pop(batch.stored.id, None) is None:
            return
        figures = self.sender.figures(self.appId)
        figures.queued -= 1
        figures.observe(max(self.sender.clock.seconds() - batch.stored.createdAt, 0.0))
        self.sender.forget(batch.stored.id)

    def failed(self, batch: _Batch, why: str) -> None:
        sender = self.sender
        figures = sender.figures(self.appId)
        figures.failed += 1
        batch.attempts += 1
        delay = min(RETRY_FIRST * 2 ** (batch.attempts - 1), RETRY_MAX)
        now = sender.clock.seconds()
        if now + delay > batch.stored.createdAt + sender.retryFor or sender.stopping:
            log.error(
                "webhook to {url} for app {appId} failed ({why}); giving batch {id} up after "
                "{n} attempts",
                url=self.where,
                appId=self.appId,
                why=why,
                id=batch.stored.id,
                n=batch.attempts,
            )
            if not sender.stopping:
                self.drop(batch.stored.id)
            return
        figures.retried += 1
        log.warn(
            "webhook to {url} for app {appId} failed ({why}); retry {n} in {delay}s",
            url=self.where,
            appId=self.appId,
            why=why,
            n=batch.attempts,
            delay=delay,
        )

        def retry() -> None:
            batch.timer = None
            self.ready.append(batch.stored.id)
            self.pump()

        batch.timer = sender.clock.callLater(delay, retry)

    def stop(self) -> None:
        """Cancel every timer and request: the batches stay in the store."""
        batches = list(self.batches.values())
        self.batches.clear()  # first: a cancelled request then finds its batch gone
        for batch in batches:
            if batch.timer is not None and batch.timer.active():
                batch.timer.cancel()
            if batch.request is not None:
                batch.request.cancel()
        self.ready.clear()


class WebhookSender:
    """
    The webhooks of every app (see the module docstring).

    @param appById: the current app of an id (apps may be reloaded), None when gone.
    @param store: where batches are kept until delivered; None keeps them in memory only.
    @param post: sends one POST; fires with the status (L{treqPoster} in a service).
    @param wallClock: seconds since the epoch, for C{time_ms}.
    """

    def __init__(
        self,
        appById: Callable[[str], App | None],
        store: IStore | None,
        clock: IReactorTime,
        post: PostFunction,
        *,
        wallClock: Callable[[], float] = time.time,
        debounce: float = DEBOUNCE,
        batchSize: int = BATCH_SIZE,
        batchDelay: float = BATCH_DELAY,
        timeout: float = TIMEOUT,
        retryFor: float = RETRY_FOR,
        maxQueue: int = MAX_QUEUE,
        maxInFlight: int = MAX_IN_FLIGHT,
    ) -> None:
        self.appById = appById
        self.store = store
        self.clock = clock
        self.post = post
        self.wallClock = wallClock
        self.debounce = debounce
        self.batchSize = batchSize
        self.batchDelay = batchDelay
        self.timeout = timeout
        self.retryFor = retryFor
        self.maxQueue = maxQueue
        self.maxInFlight = maxInFlight
        self.stopping = False
        self._targets: dict[tuple[str, str], _Target] = {}
        self._figures: dict[str, WebhookFigures] = {}
        # (app, "c" or "m", channel, user or "") -> the debounced vacated / member_removed
        self._debounced: dict[tuple[str, str, str, str], tuple[IDelayedCall, WebhookEvent]] = {}
        self._saving: set[Deferred[None]] = set()

    # -- what the hub tells ----------------------------------------------------------------------

    def occupied(self, appId: str, channel: str) -> None:
        if self._cancelled((appId, "c", channel, "")):
            return
        self._emit(appId, fmt.channelEvent(fmt.OCCUPIED, channel))

    def vacated(self, appId: str, channel: str) -> None:
        self._later((appId, "c", channel, ""), fmt.channelEvent(fmt.VACATED, channel))

    def memberAdded(self, appId: str, channel: str, userId: str) -> None:
        if self._cancelled((appId, "m", channel, userId)):
            return
        self._emit(appId, fmt.memberEvent(fmt.MEMBER_ADDED, channel, userId))

    def memberRemoved(self, appId: str, channel: str, userId: str) -> None:
        self._later(
            (appId, "m", channel, userId), fmt.memberEvent(fmt.MEMBER_REMOVED, channel, userId)
        )

    def clientEvent(
        self, appId: str, channel: str, event: str, data: str, socketId: str, userId: str | None
    ) -> None:
        if self._wanted(appId, fmt.CLIENT_EVENT):
            self._emit(appId, fmt.clientEvent(channel, event, data, socketId, userId))

    def cacheMiss(self, appId: str, channel: str) -> None:
        self._emit(appId, fmt.channelEvent(fmt.CACHE_MISS, channel))

    def subscriptionCount(self, appId: str, channel: str, count: int) -> None:
        self._emit(appId, fmt.subscriptionCountEvent(channel, count))

    # -- debounce --------------------------------------------------------------------------------

    def _cancelled(self, key: tuple[str, str, str, str]) -> bool:
        """True when C{key}'s leave was waiting: both it and this come are dropped."""
        pending = self._debounced.pop(key, None)
        if pending is None:
            return False
        if pending[0].active():
            pending[0].cancel()
        return True

    def _later(self, key: tuple[str, str, str, str], event: WebhookEvent) -> None:
        appId = key[0]
        if not self._wanted(appId, str(event["name"])):
            return
        if self.debounce <= 0 or self.stopping:
            self._emit(appId, event)
            return
        old = self._debounced.pop(key, None)
        if old is not None and old[0].active():
            old[0].cancel()  # cannot happen (a leave without a come between); keep one

        def fire() -> None:
            self._debounced.pop(key, None)
            self._emit(appId, event)

        self._debounced[key] = (self.clock.callLater(self.debounce, fire), event)

    # -- batches ---------------------------------------------------------------------------------

    def _wanted(self, appId: str, kind: str) -> bool:
        app = self.appById(appId)
        return app is not None and any(t.wants(kind) for t in app.webhooks)

    def _emit(self, appId: str, event: WebhookEvent) -> None:
        app = self.appById(appId)
        if app is None or not app.webhooks:
            return
        kind = str(event["name"])
        for target in app.webhooks:
            if target.wants(kind):
                self._target(appId, target).add(event)

    def _target(self, appId: str, target: WebhookTarget) -> _Target:
        key = (appId, target.url)
        queue = self._targets.get(key)
        if queue is None or queue.target != target:
            if queue is None:
                queue = self._targets[key] = _Target(self, appId, target)
            else:
                queue.target = target  # headers or kinds changed by a reload
        return queue

    def figures(self, appId: str) -> WebhookFigures:
        """The figures of C{appId} (created at zero)."""
        figures = self._figures.get(appId)
        if figures is None:
            figures = self._figures[appId] = WebhookFigures()
        return figures

    def allFigures(self) -> dict[str, WebhookFigures]:
        """App id -> its L{WebhookFigures}, for C{/metrics} labelled per app."""
        return dict(self._figures)

    def metrics(self) -> list[tuple[str, str, str, float]]:
        """C{(name, help, type, value)} summed over the apps (L{allFigures} has them per app)."""
        all_ = list(self._figures.values())
        return [
            (
                "pushsvc_webhooks_sent_total",
                "Webhook batches accepted by a receiver",
                "counter",
                sum(f.sent for f in all_),
            ),
            (
                "pushsvc_webhooks_failed_total",
                "Webhook attempts that failed (status, refused, timeout)",
                "counter",
                sum(f.failed for f in all_),
            ),
            (
                "pushsvc_webhooks_retried_total",
                "Webhook attempts scheduled again after a failure",
                "counter",
                sum(f.retried for f in all_),
            ),
            (
                "pushsvc_webhooks_dropped_total",
                "Webhook batches given up (retries ran out or the queue overflowed)",
                "counter",
                sum(f.dropped for f in all_),
            ),
            (
                "pushsvc_webhooks_queued",
                "Webhook batches waiting or in flight",
                "gauge",
                sum(f.queued for f in all_),
            ),
            (
                "pushsvc_webhooks_latency_seconds_sum",
                "Seconds from a webhook batch made to accepted, summed",
                "counter",
                sum(f.latencySum for f in all_),
            ),
        ]

    # -- the store -------------------------------------------------------------------------------

    def save(self, stored: PendingWebhook) -> Deferred[None]:
        """Keep C{stored} in the store; fires with None (a store failure is logged: the batch
        is still sent, but would not survive a restart)."""
        if self.store is None:
            return succeed(None)
        d: Deferred[None] = self.store.saveWebhook(stored)

        def failed(f: Failure) -> None:
            log.warn(
                "webhook batch {id} not kept in the store: {error}",
                id=stored.id,
                error=f.getErrorMessage(),
            )

        d.addErrback(failed)
        self._saving.add(d)
        d.addBoth(self._saved, d)
        return d

    def _saved(self, result: object, d: Deferred[None]) -> object:
        self._saving.discard(d)
        return result

    def forget(self, batchId: str) -> None:
        if self.store is None:
            return

        def failed(f: Failure) -> None:
            log.warn(
                "webhook batch {id} not removed from the store: {error}",
                id=batchId,
                error=f.getErrorMessage(),
            )

        self.store.deleteWebhook(batchId).addErrback(failed)

    def resume(self) -> Deferred[int]:
        """Queue the batches the store kept (the store is open). Fires with how many."""
        if self.store is None:
            return succeed(0)

        def queued(batches: list[PendingWebhook]) -> int:
            n = 0
            for stored in batches:
                if any(stored.id in t.batches for t in self._targets.values()):
                    continue
                app = self.appById(stored.appId)
                target = (
                    next((t for t in app.webhooks if t.url == stored.url), None) if app else None
                )
                self._target(stored.appId, target or WebhookTarget(stored.url)).queue(stored)
                n += 1
            if n:
                log.info("{n} webhook batches kept from before the restart queued again", n=n)
            return n

        def failed(f: Failure) -> int:
            log.error("reading the pending webhooks failed: {error}", error=f.getErrorMessage())
            return 0

        d: Deferred[list[PendingWebhook]] = self.store.pendingWebhooks(RESUME_LIMIT)
        return d.addCallback(queued).addErrback(failed)

    def stop(self) -> Deferred[None]:
        """
        Send the debounced events on, write what was gathered as batches to the store, and stop
        every timer and POST (the batches stay in the store). Fires with None once the store has
        them, before the store closes.
        """
        for key, (call, event) in list(self._debounced.items()):
            if call.active():
                call.cancel()
            self._emit(key[0], event)
        self._debounced.clear()
        self.stopping = True
        flushes = [t.flush() for t in self._targets.values()]
        for target in self._targets.values():
            target.stop()
        waits: list[Deferred[Any]] = [*flushes, *self._saving]
        return DeferredList(waits, consumeErrors=True).addCallback(lambda _: None)


# -- the HTTP client -------------------------------------------------------------------------------


class _Discard(TwistedProtocol):
    """Reads a receiver's reply body and throws it away, stopping past L{MAX_RESPONSE_BYTES}."""

    def __init__(self) -> None:
        self.seen = 0

    def dataReceived(self, data: bytes) -> None:
        self.seen += len(data)
        if self.seen > MAX_RESPONSE_BYTES and self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]


def treqPoster(reactor: Any, maxPerHost: int = MAX_IN_FLIGHT) -> tuple[PostFunction, Any]:
    """
    The C{post} of a service: treq with a pool of persistent connections of its own.

    @return: C{post(url, body, headers)} firing with the status once the headers are in (the
        body is read and thrown away), and the pool (close it on stop).
    """
    import treq
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = maxPerHost
    client = treq.client.HTTPClient(Agent(reactor, pool=pool))

    def post(url: str, body: bytes, headers: dict[str, str]) -> Deferred[int]:
        """POST C{body} to C{url}; fires with the status; fails when there is no answer."""
        sent: dict[bytes | str, bytes | str] = dict(headers.items())
        d: Deferred[Any] = client.post(url, data=body, headers=sent)

        def status(response: Any) -> int:
            response.deliverBody(_Discard())
            return int(response.code)

        return d.addCallback(status)

    return post, pool
