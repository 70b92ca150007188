"""
The real-socket integration tier, as pytest-twisted tests: the whole service in this process on
a loopback port of the system's choosing, driven by a real HTTP client and a real WebSocket
client. pytest-twisted runs the reactor in a greenlet for the whole session, which trial's test
cases (they spin the reactor themselves) cannot share: this directory is collected only when
named (C{pytest tests/integration}, as scripts/test.sh does in a run of its own), see
L{tests.conftest.pytest_ignore_collect}.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.client import Agent, HTTPConnectionPool

from pushsvc.service import PushService, ServiceConfig
from tests.helpers import boundPort, logObserver, portOf
from tests.wsclient import PATH, connectClient

APP_ID, APP_KEY, SECRET = "7", "live-key", "live-secret"


@dataclass
class Live:
    """A running service and the log lines it wrote."""

    service: PushService
    lines: list[str]


@pytest_twisted.async_yield_fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    """A started PushService on tcp:0 with the memory store; stopped afterwards."""
    config = ServiceConfig(
        listen=("tcp:0:interface=127.0.0.1",),
        dataDir=tmp_path / "data",
        storeURL="memory:",
        appId=APP_ID,
        appKey=APP_KEY,
        environ={"PUSHSVC_APP_SECRET": SECRET},
    )
    pushsvc = PushService(config, reactor)
    lines: list[str] = []
    observer = logObserver(lambda event: lines.append(formatEvent(event)))
    globalLogPublisher.addObserver(observer)
    try:
        pushsvc.startService()
        await pushsvc.whenReady()
        yield Live(pushsvc, lines)
    finally:
        globalLogPublisher.removeObserver(observer)
        if pushsvc.running:
            await pushsvc.stopService()


@pytest.fixture
def http() -> HTTPClient:
    """A treq client whose connections close after each request (a clean reactor)."""
    return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


@pytest_twisted.ensureDeferred
async def test_boundPortLoggedAndServed(live: Live, http: HTTPClient) -> None:
    """Started on tcp:0, pushsvc logs the port it really bound, and answers there."""
    port = portOf(live.service.ports[0])
    assert port != 0
    assert boundPort("\n".join(live.lines)) == port
    response = await http.get(f"http://127.0.0.1:{port}/healthz")
    assert response.code == 200
    assert json.loads(await response.text())["status"] == "ok"


@pytest_twisted.ensureDeferred
async def test_webSocketGetsPublish(live: Live) -> None:
    """A real WebSocket client subscribed to a channel receives what the hub publishes."""
    service = live.service
    port = portOf(service.ports[0])
    client = await connectClient(port, PATH.format(key=APP_KEY))
    try:
        client.sendMessage(
            json.dumps({"event": "pusher:subscribe", "data": {"channel": "news"}}).encode()
        )
        await client.expect("pusher_internal:subscription_succeeded")
        app = service.apps.default
        await service.hub.publish(app, ["news"], "headline", '{"n":1}')
        message = await client.expect("headline")
        assert (message["channel"], message["data"]) == ("news", '{"n":1}')
    finally:
        client.sendClose(1000)
        await client.closed
