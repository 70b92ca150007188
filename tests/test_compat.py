"""
The start-up check of the Twisted and Autobahn internals pushsvc relies on
(L{pushsvc.compat}), and the service tree that runs it before anything listens.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pushsvc import compat
from pushsvc.compat import PrivateAPIMissing, checkPrivateAPIs, missingPrivateAPIs
from pushsvc.fanout.registry import Registry
from pushsvc.interfaces import PushSettings
from pushsvc.local import LocalState
from pushsvc.service import PushService, ServiceConfig, StartupError
from tests.helpers import freePort, portOf
from tests.test_startup import takenPort


class CheckTests(SynchronousTestCase):
    def test_installedVersionsHaveEverything(self) -> None:
        """With the versions installed here, nothing pushsvc relies on is missing."""
        self.assertEqual(missingPrivateAPIs(reactor), [])
        checkPrivateAPIs(reactor)  # does not raise
        self.assertEqual(reactor.getDelayedCalls(), [])  # the probe leaves no timer behind

    def test_missingAttributesAreNamedWithVersions(self) -> None:
        """A missing attribute (of an HTTP channel, of an Autobahn connection, of a TCP
        connection) is named, with the installed versions, on one line."""
        self.patch(compat, "HTTP_CHANNEL", (*compat.HTTP_CHANNEL, "_goneFromTwistedWeb"))
        self.patch(compat, "AUTOBAHN_PROTOCOL", (*compat.AUTOBAHN_PROTOCOL, "goneFromAutobahn"))
        self.patch(compat, "TCP_CONNECTION", (*compat.TCP_CONNECTION, "_goneFromTcp"))
        e = self.assertRaises(PrivateAPIMissing, checkPrivateAPIs, reactor)
        message = str(e)
        self.assertNotIn("\n", message)
        self.assertIn("twisted.web.http.HTTPChannel._goneFromTwistedWeb", message)
        self.assertIn("autobahn WebSocketServerProtocol.goneFromAutobahn", message)
        self.assertIn("twisted.internet.tcp.Connection._goneFromTcp", message)
        self.assertIn("Twisted ", message)
        self.assertIn("autobahn ", message)
        self.assertNotIn("_buffer", message)  # only what is missing

    def test_serviceRefusesToStart(self) -> None:
        """PushService does not start when an attribute is missing: one line, exit status 1,
        before the data directory is made or anything listens."""
        self.patch(compat, "TCP_PORT", (*compat.TCP_PORT, "_goneFromPort"))
        path = Path(self.mktemp())
        port = freePort()
        config = ServiceConfig(listen=(f"tcp:{port}:interface=127.0.0.1",), dataDir=path)
        service = PushService(config, reactor)
        with capturedLogs() as events:
            e = self.assertRaises(StartupError, service.startService)
        self.assertEqual(e.code, 1)
        self.assertIn("twisted.internet.tcp.Port._goneFromPort", str(e))
        self.assertEqual(len(events), 1)
        self.assertFalse(path.exists())
        self.assertFalse(service.running)
        self.assertEqual(list(service), [])
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # nothing listens there


class ServiceTreeTests(TestCase):
    timeout = 60

    def config(self, *listen: str) -> ServiceConfig:
        return ServiceConfig(listen=listen, dataDir=Path(self.mktemp()), storeURL="memory:")

    @inlineCallbacks
    def test_listenersAreChildren(self) -> Any:
        """Each --listen is a running child service, in order; stopping the service closes
        their ports and stops them."""
        first, second = freePort(), freePort()
        service = PushService(
            self.config(f"tcp:{first}:interface=127.0.0.1", f"tcp:{second}:interface=127.0.0.1"),
            reactor,
        )
        service.startService()
        children = list(service)
        self.assertEqual(
            [c.name for c in children],
            [f"listen tcp:{first}:interface=127.0.0.1", f"listen tcp:{second}:interface=127.0.0.1"],
        )
        self.assertTrue(all(isinstance(c, StreamServerEndpointService) for c in children))
        self.assertTrue(all(c.running for c in children))
        self.assertEqual([portOf(p) for p in service.ports], [first, second])
        yield service.stopService()
        self.assertFalse(any(c.running for c in children))
        for port in (first, second):
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))  # closed

    @inlineCallbacks
    def test_secondPortTakenClosesTheFirst(self) -> Any:
        """When a later --listen cannot bind, start-up fails with its one line and the ports
        already bound are closed again; no child is left."""
        free, taken = freePort(), takenPort(self)
        service = PushService(
            self.config(f"tcp:{free}:interface=127.0.0.1", f"tcp:{taken}:interface=127.0.0.1"),
            reactor,
        )
        with capturedLogs():
            e = self.assertRaises(StartupError, service.startService)
        self.assertIn(f"cannot listen on tcp:{taken}:interface=127.0.0.1", str(e))
        self.assertIn("choose another --listen", str(e))
        self.assertNotIn("\n", str(e))
        self.assertFalse(service.running)
        self.assertEqual((list(service), service.ports), ([], []))
        yield service.listenersClosed
        with socket.socket() as s:
            s.bind(("127.0.0.1", free))  # released

    def test_periodicWorkOfTheClusterState(self) -> None:
        """The in-process state has no periodic work; the Redis state's heartbeat is a
        TimerService for the service tree to run."""
        registry = Registry(PushSettings(), reactor)
        self.assertEqual(LocalState(registry).services(), [])
        from pushsvc.redis.state import RedisState

        class Broker:
            def addScript(self, name: str, source: str) -> None:
                pass

            def whenReady(self, hook: Any) -> None:
                pass

        state = RedisState(Broker(), registry, reactor)  # type: ignore[arg-type]  # a stand-in broker, for the check only
        [timer] = state.services()
        self.assertIsInstance(timer, TimerService)
        self.assertFalse(timer.running)
