"""
Several real C{twistd -n pushsvc} processes on different loopback ports sharing the machine's
Redis (C{--redis}) and PostgreSQL (C{--store postgresql://...}, a schema of its own per test):
what one process accepts reaches the clients of every other one. Then a private redis-server is
killed under two processes and started again.

Each test uses an app id of its own, so its Redis keys (C{pushsvc:{app id}:...}) are its own;
they are deleted afterwards, and so is the PostgreSQL schema.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any
from urllib.parse import urlencode

import pusher
import pusher.errors
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from pushsvc.apiauth import apiSignature, bodyMd5
from pushsvc.apps import App
from pushsvc.signing import userAuth
from tests.helpers import freePort, requireService
from tests.procs import TwistdProcess, killIfRunning, startTwistd
from tests.redisutil import REDIS_URL, RedisServer, deleteKeys, requireRedis
from tests.wsclient import PATH, WSClient, connectClient, subscribeClient

PG_URL = os.environ.get("PUSHSVC_TEST_POSTGRESQL", "postgresql://postgres@127.0.0.1:5432/test")
SESSION_KEY = "cluster-test-session-key-0123456789abcdef"


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True, connect_timeout=3) as connection:
        connection.execute(sql)


def createSchema() -> str:
    """A fresh PostgreSQL schema; skips (fails in CI) when PostgreSQL is not reachable."""
    import psycopg

    name = f"pushsvc_cluster_{uuid.uuid4().hex[:12]}"
    try:
        _admin(f"CREATE SCHEMA {name}")
    except psycopg.OperationalError as e:
        requireService("PostgreSQL", f"is not reachable at {PG_URL}: {str(e).strip()}")
    return name


def storeURL(schema: str) -> str:
    return f"{PG_URL}?options=-c%20search_path%3D{schema}"


class Cluster:
    """Three (or n) pushsvc processes of one app sharing Redis and PostgreSQL."""

    def __init__(self, case: TestCase, redis: str = REDIS_URL, schema: str | None = None) -> None:
        self.case = case
        self.redis = redis
        self.schema = schema
        suffix = uuid.uuid4().hex[:10]
        self.app = App(str(uuid.uuid4().int % 10**12), f"key{suffix}", f"secret{suffix}")
        self.ports: list[int] = []
        self.adminPorts: list[int] = []  # the admin listeners (detailed health, /metrics)
        self.procs: list[TwistdProcess] = []

    def start(self, n: int = 3, extra: tuple[str, ...] = ()) -> Any:
        """Fires once every process has its store and broker ready; C{extra}: more options."""
        waits = []
        for _ in range(n):
            adminPort = freePort()  # the admin listener logs no bound port: chosen here
            args = [
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--admin-listen",
                f"tcp:{adminPort}:interface=127.0.0.1",
                "--data-dir",
                self.case.mktemp(),
                "--app-id",
                self.app.id,
                "--app-key",
                self.app.key,
                "--redis",
                self.redis,
            ]
            if self.schema is not None:
                args += ["--store", storeURL(self.schema)]
            else:
                args += ["--store", "memory:"]
            args += extra
            env = {"PUSHSVC_APP_SECRET": self.app.secret, "PUSHSVC_SESSION_KEY": SESSION_KEY}
            proc = startTwistd(args, env=env)
            self.case.addCleanup(killIfRunning, proc)
            self.ports.append(0)  # the bound port, read from the log below
            self.adminPorts.append(adminPort)
            self.procs.append(proc)
            learned = proc.whenListening().addCallback(self._learned, len(self.ports) - 1)
            waits += [learned, proc.waitFor("message store ready"), proc.waitFor("broker ready")]
        return gatherResults(waits)

    def _learned(self, port: int, i: int) -> None:
        self.ports[i] = port

    def sdk(self, i: int) -> pusher.Pusher:
        return pusher.Pusher(
            app_id=self.app.id,
            key=self.app.key,
            secret=self.app.secret,
            host="127.0.0.1",
            port=self.ports[i],
            ssl=False,
        )

    def call(self, i: int, method: str, *args: Any) -> Any:
        """Call the official SDK against process C{i} (in a thread: it blocks)."""
        return deferToThread(getattr(self.sdk(i), method), *args)


class ClusterCase(TestCase):
    """Helpers: WebSocket clients closed at cleanup, a treq client, app keys deleted."""

    timeout = 120

    def setUp(self) -> None:
        self.clients: list[WSClient] = []
        self.http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))

    def cluster(self, **kw: Any) -> Cluster:
        cluster = Cluster(self, **kw)
        self.addCleanup(deleteKeys, f"pushsvc:{cluster.app.id}:*")
        return cluster

    @inlineCallbacks
    def connect(self, cluster: Cluster, i: int) -> Any:
        port = cluster.ports[i]
        client = yield connectClient(port, PATH.format(key=cluster.app.key), established=False)
        self.clients.append(client)
        self.addCleanup(self._close, client)
        yield client.expect("pusher:connection_established")
        return client

    def _close(self, client: WSClient) -> Any:
        if not client.closed.called:
            client.transport.abortConnection()  # type: ignore[union-attr]  # connected: transport is set
        return client.closed

    def subscribe(
        self, cluster: Cluster, client: WSClient, channel: str, channelData: str | None = None
    ) -> Any:
        return subscribeClient(cluster.app, client, channel, channelData, timeout=10)


class ClusterTests(ClusterCase):
    def setUp(self) -> None:
        requireRedis()
        super().setUp()

    @inlineCallbacks
    def test_publishReachesEveryProcess(self) -> Any:
        """
        With three processes on one Redis and one PostgreSQL, an event published with the
        official SDK through any one of them reaches the subscribers on all three; socket_id
        excludes a connection that lives on another process; socket ids are unique.
        """
        cluster = self.cluster(schema=self._schema())
        yield cluster.start(3)
        clients = yield gatherResults([self.connect(cluster, i) for i in range(3)])
        self.assertEqual(len({c.socketId for c in clients}), 3)
        for client in clients:
            yield self.subscribe(cluster, client, "news")
        for i in range(3):
            yield cluster.call(i, "trigger", "news", "ev", {"via": i})
            for client in clients:
                msg = yield client.expect("ev", "news")
                self.assertEqual(msg["data"], f'{{"via": {i}}}')
        # exclusion of a socket on process 2, published through process 0
        yield cluster.call(0, "trigger", "news", "excluded", "x", clients[2].socketId)
        yield cluster.call(1, "trigger", "news", "marker", "m")
        for client in clients:
            yield client.expect("marker", "news")
        self.assertEqual([len(c.matching("excluded")) for c in clients], [1, 1, 0])

    def _schema(self) -> str:
        schema = createSchema()
        self.addCleanup(deferToThread, _admin, f"DROP SCHEMA {schema} CASCADE")
        return schema

    @inlineCallbacks
    def test_presenceAndQueriesAcrossProcesses(self) -> Any:
        """
        A member joining on one process is announced to subscribers on the others and is in
        their subscription_succeeded list; channel info, the users list and the channels list
        through any process count every process; when the member's process is killed with
        SIGKILL, the others announce member_removed within seconds.
        """
        cluster = self.cluster()
        yield cluster.start(3)
        watcher = yield self.connect(cluster, 0)
        ann = yield self.connect(cluster, 1)
        reader = yield self.connect(cluster, 2)
        yield self.subscribe(cluster, watcher, "presence-room", '{"user_id":"watcher"}')
        yield self.subscribe(cluster, reader, "news")
        joined = yield self.subscribe(
            cluster, ann, "presence-room", '{"user_id":"ann","user_info":{"name":"Ann"}}'
        )
        self.assertEqual(sorted(joined["data"]["presence"]["ids"]), ["ann", "watcher"])
        added = yield watcher.expect("pusher_internal:member_added", "presence-room")
        self.assertEqual(added["data"], {"user_id": "ann", "user_info": {"name": "Ann"}})

        info = yield cluster.call(
            2, "channel_info", "presence-room", ["user_count", "subscription_count"]
        )
        self.assertEqual((info["user_count"], info["subscription_count"]), (2, 2))
        users = yield cluster.call(2, "users_info", "presence-room")
        self.assertEqual(sorted(u["id"] for u in users["users"]), ["ann", "watcher"])
        channels = yield cluster.call(0, "channels_info")
        self.assertEqual(channels["channels"], {"presence-room": {}, "news": {}})
        channels = yield cluster.call(1, "channels_info", "presence-", ["user_count"])
        self.assertEqual(channels["channels"], {"presence-room": {"user_count": 2}})

        # Reaped within the node TTL and a heartbeat (5 + 1 s): the wait is bounded by that and
        # some slack for a loaded machine; the timing itself is pinned on a Clock by
        # tests/test_contracts.py (MemoryStateTests.test_deadNodeReaped).
        cluster.procs[1].transport.signalProcess("KILL")  # type: ignore[union-attr]  # connected: transport is set
        removed = yield watcher.expect(
            "pusher_internal:member_removed", "presence-room", timeout=10
        )
        self.assertEqual(removed["data"], {"user_id": "ann"})
        info = yield cluster.call(0, "channel_info", "presence-room", ["user_count"])
        self.assertEqual(info["user_count"], 1)

    @inlineCallbacks
    def test_terminateReachesOtherProcess(self) -> Any:
        """terminate_connections through one process closes (4009) the user's connection on
        another one, and only that one."""
        cluster = self.cluster()
        yield cluster.start(2)
        user = yield self.connect(cluster, 1)
        other = yield self.connect(cluster, 1)
        userData = '{"id":"u1"}'
        user.sendJSON(
            "pusher:signin",
            {"auth": userAuth(cluster.app, user.socketId, userData), "user_data": userData},
        )
        yield user.expect("pusher:signin_success")
        # (the SDK's terminate_user_connections leaves /apps/{id} out of the path)
        path = f"/apps/{cluster.app.id}/users/u1/terminate_connections"
        body = b"{}"
        params = {
            "auth_key": cluster.app.key,
            "auth_timestamp": str(int(time.time())),
            "auth_version": "1.0",
            "body_md5": bodyMd5(body),
        }
        params["auth_signature"] = apiSignature(cluster.app.secret, "POST", path, params)
        url = f"http://127.0.0.1:{cluster.ports[0]}{path}?{urlencode(params)}"
        reply = yield self.http.post(
            url, data=body, headers=Headers({"Content-Type": ["application/json"]})
        )
        self.assertEqual(reply.code, 200, (yield reply.text()))
        code = yield user.closed
        self.assertEqual(code, 4009)
        yield other.roundTrip()


class OutageTests(ClusterCase):
    @inlineCallbacks
    def test_redisOutage(self) -> Any:
        """
        A private redis-server under two pushsvc processes is killed mid-run: publishes get 503
        with a JSON error and /healthz names the broker; the WebSocket clients are closed with
        4200 (they may have missed events published meanwhile: reconnect and catch up) and new
        ones are refused with 4100 (back off) while Redis is away. Started again on the same
        port, the processes reconnect by themselves and a client that reconnects gets events.
        """
        server = RedisServer()
        yield server.start()
        self.addCleanup(server.stop)
        cluster = self.cluster(redis=f"redis://127.0.0.1:{server.port}/0")
        yield cluster.start(2)
        http = self.http
        client = yield self.connect(cluster, 1)
        yield self.subscribe(cluster, client, "news")
        yield cluster.call(0, "trigger", "news", "before", "1")
        yield client.expect("before", "news")

        marks = [len(p.output) for p in cluster.procs]
        yield server.stop()
        yield gatherResults(
            [p.waitFor("broker down", after=m) for p, m in zip(cluster.procs, marks, strict=True)]
        )
        code = yield client.closed
        self.assertEqual(code, 4200)
        refused = yield connectClient(
            cluster.ports[1], PATH.format(key=cluster.app.key), established=False
        )
        self.addCleanup(self._close, refused)
        error = yield refused.expect("pusher:error")
        self.assertEqual(error["data"]["code"], 4100)
        self.assertEqual((yield refused.closed), 4100)
        try:
            yield cluster.call(0, "trigger", "news", "during", "2")
        except pusher.errors.PusherError as e:
            self.assertIn("503", str(e))
            self.assertIn("broker", str(e).lower())
        else:
            self.fail("a publish while Redis is down was accepted")
        health = yield http.get(f"http://127.0.0.1:{cluster.ports[0]}/healthz")
        self.assertEqual(health.code, 503)
        self.assertEqual((yield health.json()), {"status": "degraded"})  # public: no address
        health = yield http.get(f"http://127.0.0.1:{cluster.adminPorts[0]}/healthz")
        self.assertEqual(health.code, 503)
        body = yield health.json()
        self.assertIn(f"redis://127.0.0.1:{server.port}/0 unreachable: ", body["broker"])
        self.assertEqual(body["store"], "ok")

        marks = [len(p.output) for p in cluster.procs]
        yield server.start()
        yield gatherResults(
            [p.waitFor("broker ready", after=m) for p, m in zip(cluster.procs, marks, strict=True)]
        )
        client = yield self.connect(cluster, 1)
        yield self.subscribe(cluster, client, "news")
        yield cluster.call(0, "trigger", "news", "after", "3")
        msg = yield client.expect("after", "news")
        self.assertEqual(msg["data"], "3")
        self.assertEqual(client.matching("during"), [])
        health = yield http.get(f"http://127.0.0.1:{cluster.ports[0]}/healthz")
        self.assertEqual(health.code, 200)
        yield health.content()
        info = yield cluster.call(0, "channel_info", "news", ["subscription_count"])
        self.assertEqual(info["subscription_count"], 1)
        for p in cluster.procs:
            p.transport.signalProcess("TERM")  # type: ignore[union-attr]  # connected: transport is set
            yield p.ended


class BrowserTests(SynchronousTestCase):
    def test_chatAcrossProcesses(self) -> None:
        """A chat message posted in a page served by process A appears in a page connected to
        process B (same PostgreSQL store, same Redis, same session key)."""
        from tests.syncserver import ServerProcess
        from tests.test_browser import ChatPage, launchBrowser

        requireRedis()
        schema = createSchema()
        self.addCleanup(_admin, f"DROP SCHEMA {schema} CASCADE")
        suffix = uuid.uuid4().hex[:10]
        app = App(str(uuid.uuid4().int % 10**12), f"key{suffix}", f"secret{suffix}")
        self.addCleanup(deleteKeys, f"pushsvc:{app.id}:*")
        env = {"PUSHSVC_APP_SECRET": app.secret, "PUSHSVC_SESSION_KEY": SESSION_KEY}
        servers = []
        for _ in range(2):
            server = ServerProcess(
                0,
                self.mktemp(),
                "--app-id",
                app.id,
                "--app-key",
                app.key,
                "--redis",
                REDIS_URL,
                "--store",
                storeURL(schema),
                env=env,
            )
            self.addCleanup(server.stop)
            server.start()
            servers.append(server)
        for server in servers:
            if not any("broker ready" in line for line in server.output):
                server.waitFor("broker ready")
        browser = launchBrowser(self)
        ann = ChatPage(browser, servers[0].url, "Ann", room="cluster")
        bob = ChatPage(browser, servers[1].url, "Bob", room="cluster")
        ann.post("hello from process A")
        bob.page.wait_for_function(
            "t => [...document.querySelectorAll('#message-list li.message .text')]"
            ".some(e => e.textContent.includes(t))",
            arg="hello from process A",
            timeout=10_000,
        )
        self.assertIn("hello from process A", bob.texts())
        self.assertEqual(ann.errors + bob.errors, [])
