"""
IBroker.claim: a key is claimed once within its ttl, on every process the broker reaches. One
contract for the in-process broker (on a task.Clock) and the Redis broker (the machine's Redis),
then /notify on two Redis nodes, each on a loopback port: a call accepted by one is refused (409)
by the other.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Site

from pushsvc.apiauth import NOTIFY_CLAIM_TTL, notifySignature
from pushsvc.apps import App, Apps
from pushsvc.interfaces import BrokerUnavailable
from pushsvc.local import LocalBroker
from pushsvc.redis.address import parseRedisAddress
from pushsvc.redis.broker import RedisBroker
from pushsvc.webhook import NotifyResource
from tests.helpers import listenLocal, portOf
from tests.redisutil import RedisTestCase

APP = App("a1", "key1", "secret1")


class ClaimContractMixin:
    """What every broker's claim does; C{self.broker} is set up by the test case."""

    broker: Any

    @inlineCallbacks
    def test_firstClaimOnly(self) -> Generator[Deferred[Any], Any, None]:
        """The first claim of a key fires True, every later one within the ttl False; another
        key, or the same key of another app, is a claim of its own."""
        results = []
        for appId, key in (("a1", "k"), ("a1", "k"), ("a1", "k"), ("a1", "other"), ("a2", "k")):
            results.append((yield self.broker.claim(appId, key, 60.0)))
        self.assertEqual(results, [True, False, False, True, True])  # type: ignore[attr-defined]  # a mixin: the TestCase has it


class LocalClaimTests(ClaimContractMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = LocalBroker(self.clock)

    def test_expiry(self) -> None:
        """A claim lasts its ttl on the broker's clock, and then the key may be claimed again."""
        self.assertTrue(self.successResultOf(self.broker.claim("a", "k", 10.0)))
        self.clock.advance(9.9)
        self.assertFalse(self.successResultOf(self.broker.claim("a", "k", 10.0)))
        self.clock.advance(0.2)
        self.assertTrue(self.successResultOf(self.broker.claim("a", "k", 10.0)))

    def test_bounded(self) -> None:
        """At most maxClaims live claims are kept: beyond, a claim fails with BrokerUnavailable
        (a 503) rather than forgetting one still live; expired ones make room again."""
        self.broker.maxClaims = 3
        for key in "abc":
            self.assertTrue(self.successResultOf(self.broker.claim("a", key, 10.0)))
        self.failureResultOf(self.broker.claim("a", "d", 10.0), BrokerUnavailable)
        self.assertFalse(self.successResultOf(self.broker.claim("a", "a", 10.0)))
        self.clock.advance(10.0)
        for key in "def":
            self.assertTrue(self.successResultOf(self.broker.claim("a", key, 10.0)))
        self.assertEqual(len(self.broker._claims), 3)


class RedisClaimTests(ClaimContractMixin, RedisTestCase):
    @inlineCallbacks
    def setUp(self) -> Generator[Deferred[Any], Any, None]:  # type: ignore[override]  # trial waits
        RedisTestCase.setUp(self)
        node = yield self.node()
        self.broker = node.broker

    @inlineCallbacks
    def test_keyAndExpiry(self) -> Generator[Deferred[Any], Any, None]:
        """The claim is the key {prefix}:{app}:claim:{key} with the ttl as its expiry."""
        yield self.broker.claim("a1", "k", 30.0)
        name = f"{self.prefix}:a1:claim:k"
        left = yield self.broker.command("PTTL", name)
        self.assertTrue(0 < left <= 30000, left)

    def test_redisAway(self) -> None:
        """With no connection to Redis a claim fails with BrokerUnavailable."""
        broker = RedisBroker(parseRedisAddress("tcp:127.0.0.1:1"), reactor)
        self.failureResultOf(broker.claim("a1", "k", 30.0), BrokerUnavailable)


class NotifyAcrossNodesTests(RedisTestCase):
    @inlineCallbacks
    def test_secondNodeRefuses(self) -> Generator[Deferred[Any], Any, None]:
        """
        Two nodes share one Redis: a signed /notify call accepted (202) by one is refused with
        409 by the other and by itself, and published once; a call to another channel with the
        same signature is 401 on both.
        """
        a, b = yield self.nodes(2)
        now = float(int(reactor.seconds()))
        conn = b.connect(APP.id)
        yield b.subscribe(conn, "public-orders")

        pool = HTTPConnectionPool(reactor, persistent=False)

        def site(node: Any) -> str:
            root = Resource()
            root.putChild(b"notify", NotifyResource(Apps([APP]), node.hub, lambda: now))
            port = listenLocal(Site(root))
            self.addCleanup(port.stopListening)
            return f"http://127.0.0.1:{portOf(port)}"

        bases = site(a), site(b)

        body = b'{"event":"paid","data":{"id":7}}'
        ts = str(int(now))
        signature = notifySignature(APP.secret, ts, "public-orders", body)
        headers = Headers(
            {"X-Pushsvc-Timestamp": [ts], "X-Pushsvc-Signature": ["sha256=" + signature]}
        )
        codes = []
        for base, channel in (
            (bases[0], "public-orders"),
            (bases[1], "public-orders"),
            (bases[0], "public-orders"),
            (bases[1], "private-admin"),
            (bases[0], "%23server-to-user-u1"),
        ):
            response = yield treq.post(
                f"{base}/notify/{channel}", data=body, headers=headers, pool=pool, timeout=10
            )
            reply = json.loads((yield response.content()))
            codes.append(response.code)
            if response.code >= 400:
                self.assertIsInstance(reply["error"], str)
        self.assertEqual(codes, [202, 409, 409, 401, 401])
        message = yield conn.next("paid", "public-orders")
        self.assertEqual(json.loads(message["data"]), {"id": 7})
        self.assertEqual(conn.events("paid"), [])
        left = yield a.broker.command(
            "PTTL",
            f"{self.prefix}:{APP.id}:claim:" + signature,
        )
        self.assertTrue(0 < left <= NOTIFY_CLAIM_TTL * 1000, left)
