"""
The inside view on a real C{twistd -n pushsvc}: the admin listener's JSON API after a chat post,
its C{/metrics} and detailed health, and what the public listener no longer shows.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from pushsvc.admin.site import TokenGuard
from pushsvc.service import PushService, ServiceConfig
from tests.helpers import freePort
from tests.procs import killIfRunning, startTwistd
from tests.wsclient import PATH, connectClient


class InsideViewTwistdTests(TestCase):
    timeout = 120

    def client(self) -> HTTPClient:
        return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))

    @inlineCallbacks
    def startServer(self, *extra: str) -> Any:
        self.port, self.adminPort = freePort(), freePort()
        self.base = f"http://127.0.0.1:{self.port}"
        self.admin = f"http://127.0.0.1:{self.adminPort}"
        proto = startTwistd(
            [
                "--listen",
                f"tcp:{self.port}:interface=127.0.0.1",
                "--admin-listen",
                f"tcp:{self.adminPort}:interface=127.0.0.1",
                "--data-dir",
                self.mktemp(),
                *extra,
            ]
        )
        self.addCleanup(killIfRunning, proto)
        yield proto.waitFor("message store ready")
        return proto

    @inlineCallbacks
    def test_chatPostIsRecordedWithItsCalls(self) -> Any:
        """
        After a chat post, GET /api/requests on the admin listener shows it with its store call
        (append, one row) and its broker publish, each with a start and a duration.
        """
        yield self.startServer()
        http = self.client()
        session = yield http.post(self.base + "/api/session", json={"name": "Ann"})
        self.assertEqual(session.code, 200)
        posted = yield http.post(
            self.base + "/api/rooms/general/messages",
            json={"text": "recorded?"},
            cookies=session.cookies(),
        )
        self.assertEqual(posted.code, 201, (yield posted.text()))
        response = yield http.get(self.admin + "/api/requests?limit=20")
        self.assertEqual(response.code, 200)
        records = yield response.json()
        [post] = [r for r in records if r["method"] == "POST" and r["path"].endswith("/messages")]
        self.assertEqual(post["status"], 201)
        self.assertEqual(post["endpoint"], "/api/rooms/{room}/messages")
        calls = {(c["kind"], c["name"]): c for c in post["calls"]}
        append = calls[("store", "append")]
        publish = calls[("broker", "publish")]
        self.assertEqual(append["detail"]["rows"], 1)
        self.assertEqual(publish["detail"]["command"], "in-process")
        for call in (append, publish):
            self.assertIsInstance(call["duration_ms"], float)
            self.assertGreaterEqual(call["duration_ms"], 0)
            self.assertGreaterEqual(call["start_ms"], 0)
        self.assertLess(append["start_ms"], publish["start_ms"])  # stored before announced
        one = yield http.get(f"{self.admin}/api/requests/{post['id']}")
        self.assertEqual((yield one.json())["calls"], post["calls"])

    @inlineCallbacks
    def test_webSocketSubscribeIsRecorded(self) -> Any:
        """
        A subscribe sent over a WebSocket is a request of its own in the ring, with the broker
        call it made; the upgrade is recorded as a 101.
        """
        yield self.startServer("--app-id", "77", "--app-key", "inside")
        client = yield connectClient(self.port, PATH.format(key="inside"))
        self.addCleanup(lambda: client.closed)
        self.addCleanup(client.sendClose, 1000)
        client.sendJSON("pusher:subscribe", {"channel": "news"})
        yield client.expect("pusher_internal:subscription_succeeded", "news")
        http = self.client()
        records = yield (yield http.get(self.admin + "/api/requests")).json()
        [subscribe] = [r for r in records if r["method"] == "WS"]
        self.assertEqual(subscribe["path"], "/app/inside pusher:subscribe")
        self.assertEqual(
            (subscribe["endpoint"], subscribe["app_id"]), ("ws pusher:subscribe", "77")
        )
        self.assertIn(("broker", "subscribe"), [(c["kind"], c["name"]) for c in subscribe["calls"]])
        [upgrade] = [r for r in records if r["endpoint"] == "/app/{key}"]
        self.assertEqual(upgrade["status"], 101)

    @inlineCallbacks
    def test_publicListenerShowsLess(self) -> Any:
        """
        From the public listener /metrics is 404 and /healthz says only its status; the admin
        listener's /healthz names the store and the broker, and its /metrics parses with
        process metrics, the request-duration histogram and per-app labels.
        """
        yield self.startServer()
        http = self.client()
        metrics = yield http.get(self.base + "/metrics")
        self.assertEqual(metrics.code, 404)
        self.assertIn("error", (yield metrics.json()))
        health = yield http.get(self.base + "/healthz")
        self.assertEqual(health.code, 200)
        self.assertEqual((yield health.json()), {"status": "ok"})
        detailed = yield http.get(self.admin + "/healthz")
        body = yield detailed.json()
        self.assertEqual((body["status"], body["broker"], body["store"]), ("ok", "ok", "ok"))
        text = yield (yield http.get(self.admin + "/metrics")).text()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        self.assertGreater(families["process_resident_memory_bytes"].samples[0].value, 0)
        self.assertIn("process_open_fds", families)
        self.assertEqual(families["pushsvc_http_request_duration_seconds"].type, "histogram")
        self.assertIn(
            "/healthz",
            {
                s.labels.get("endpoint")
                for s in families["pushsvc_http_request_duration_seconds"].samples
            },
        )
        apps = [s.labels["app_id"] for s in families["pushsvc_connections"].samples]
        self.assertEqual(len(apps), 1)
        self.assertIn("pushsvc_fanouts", families)  # pushsvc_fanouts_total, the family name
        self.assertNotIn("pushsvc_publishes", families)

    @inlineCallbacks
    def test_noRecording(self) -> Any:
        """With --no-recording the admin listener says so (404 on /api/requests), and serves the
        rest."""
        yield self.startServer("--no-recording")
        http = self.client()
        response = yield http.get(self.admin + "/api/requests")
        self.assertEqual(response.code, 404)
        self.assertIn("--no-recording", (yield response.json())["error"])
        stats = yield (yield http.get(self.admin + "/api/stats")).json()
        self.assertFalse(stats["recording"])
        self.assertEqual((yield http.get(self.admin + "/metrics")).code, 200)


class AdminTokenTests(SynchronousTestCase):
    def build(self, listen: str, tokenFile: Path | None = None) -> PushService:
        dataDir = Path(self.mktemp())
        dataDir.mkdir(mode=0o700)
        config = ServiceConfig(
            listen=("tcp:0:interface=127.0.0.1",),
            dataDir=dataDir,
            storeURL="memory:",
            adminListen=listen,
            adminTokenFile=tokenFile,
        )
        service = PushService(config, Clock())
        service._build()  # builds everything, opens nothing
        return service

    def test_tokenGeneratedBeyondLoopback(self) -> None:
        """An admin listener beyond loopback needs a token, generated once in the data dir, 0600."""
        service = self.build("tcp:0")
        self.assertIsInstance(service.adminSite.resource, TokenGuard)  # type: ignore[union-attr]
        path = service.config.dataDir / "admin-token"
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        token = path.read_text().strip()
        self.assertGreaterEqual(len(token), 32)
        self.assertEqual(service.adminSite.resource.token, token.encode())  # type: ignore[union-attr]

    def test_tokenFromFile(self) -> None:
        """--admin-token-file gives the token."""
        tokenFile = Path(self.mktemp())
        tokenFile.write_text("from-a-file\n")
        tokenFile.chmod(0o600)
        service = self.build("tcp:0", tokenFile)
        self.assertEqual(service.adminSite.resource.token, b"from-a-file")  # type: ignore[union-attr]

    def test_noTokenOnLoopback(self) -> None:
        """On loopback no token is asked for, and none is written."""
        service = self.build("tcp:0:interface=127.0.0.1")
        self.assertNotIsInstance(service.adminSite.resource, TokenGuard)  # type: ignore[union-attr]
        self.assertFalse((service.config.dataDir / "admin-token").exists())


class OptionsTests(SynchronousTestCase):
    def parse(self, *args: str) -> Any:
        from pushsvc.tap import Options

        options = Options()
        options.parseOptions(list(args))
        return options

    def test_defaults(self) -> None:
        """No admin option: the admin listener is loopback:8081 (a taken port only warns),
        recording is on and keeps 1,000 requests."""
        from pushsvc.tap import DEFAULT_ADMIN_LISTEN

        options = self.parse()
        self.assertEqual(DEFAULT_ADMIN_LISTEN, "tcp:8081:interface=127.0.0.1")
        self.assertIsNone(options["admin-listen"])
        self.assertFalse(options["no-recording"])
        self.assertEqual(options["recorded-requests"], 1000)

    def test_noneAndBadEndpoint(self) -> None:
        """--admin-listen none disables it; a bad endpoint is a one-line error."""
        self.assertEqual(self.parse("--admin-listen", "none")["admin-listen"], "none")
        with self.assertRaises(SystemExit) as e:
            self.parse("--admin-listen", "bogus:1")
        self.assertIn("--admin-listen", str(e.exception))
        self.assertNotIn("\n", str(e.exception))
        with self.assertRaises(SystemExit):
            self.parse("--recorded-requests", "0")
