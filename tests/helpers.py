"""Small helpers shared by the test modules."""

from __future__ import annotations

import os
import re
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, Protocol, cast

from treq.response import _Response
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.trial.unittest import FailTest, SkipTest, SynchronousTestCase
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyRequest


def inCI() -> bool:
    """True when the environment says this is a CI run (C{CI=true}, as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def requireService(name: str, reason: str) -> NoReturn:
    """
    A service the test needs (C{name}, e.g. "PostgreSQL") is missing because of C{reason}: skip
    the test on a developer's machine, but fail it in CI, where a skip would hide a broken set-up.
    """
    message = f"{name} {reason}"
    if inCI():
        raise FailTest(f"{message} (CI=true, so this fails instead of skipping)")
    raise SkipTest(message)


def portOf(port: IListeningPort) -> int:
    """The TCP port number C{port} (a C{listenTCP} result, a service's listener) is bound to."""
    address = port.getHost()
    assert isinstance(address, IPv4Address | IPv6Address), address
    return address.port


def captureLogs(case: SynchronousTestCase) -> list[LogEvent]:
    """Every log event emitted from now until the end of C{case}."""
    events: list[LogEvent] = []
    observer = logObserver(events.append)
    globalLogPublisher.addObserver(observer)
    case.addCleanup(globalLogPublisher.removeObserver, observer)
    return events


def logObserver(observe: Callable[[LogEvent], None]) -> ILogObserver:
    """C{observe} as an L{ILogObserver}: twisted.logger takes any one-argument callable."""
    return cast(ILogObserver, observe)


def asRequest(request: DummyRequest) -> Request:
    """
    A C{DummyRequest} where a C{Request} is expected: it has the parts of C{Request} our resources
    use (twisted.web's own tests pass it the same way), though it does not subclass it.
    """
    return cast(Request, request)


class StubClient(Protocol):
    """
    What C{StubTreq} is at run time (C{HTTPClient}'s request methods copied on, and C{flush}),
    which mypy cannot see; keyword arguments as treq takes them.
    """

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[_Response]: ...

    def get(self, url: str, **kwargs: Any) -> Deferred[_Response]: ...

    def post(self, url: str, **kwargs: Any) -> Deferred[_Response]: ...

    def put(self, url: str, **kwargs: Any) -> Deferred[_Response]: ...

    def delete(self, url: str, **kwargs: Any) -> Deferred[_Response]: ...

    def flush(self) -> None: ...


def stubTreq(resource: IResource) -> StubClient:
    """A C{treq.testing.StubTreq} over C{resource}, typed as what it is (see L{StubClient})."""
    return cast(StubClient, StubTreq(resource))


def sevenResources() -> tuple[
    IResource, IResource, IResource, IResource, IResource, IResource, IResource
]:
    """Placeholders for C{makeSite}'s seven resources, for tests of the site itself."""
    return Resource(), Resource(), Resource(), Resource(), Resource(), Resource(), Resource()


def listenLocal(factory: IProtocolFactory, port: int = 0) -> IListeningPort:
    """C{factory} listening on 127.0.0.1 (on a port the system picks, by default)."""
    # Twisted annotates listenTCP with a ServerFactory generic in a protocol type that mypy
    # cannot solve for Site or other factories; any IProtocolFactory listens.
    listening: IListeningPort = reactor.listenTCP(
        port,
        factory,  # type: ignore[arg-type]  # see the comment above
        interface="127.0.0.1",
    )
    return listening


def freePort() -> int:
    """
    A port nothing listens on now. Only for servers that cannot report the port they bound
    (redis-server, nginx) or tests about a port being released: pushsvc children listen on
    C{tcp:0} and their port is read from their log (L{boundPort}).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_BOUND = re.compile(r"listening on \S+ \(bound to [^)]*:(\d+)\)")


def boundPort(output: str) -> int:
    """The TCP port of the first C{listening on ... (bound to host:port)} line pushsvc logged."""
    found = _BOUND.search(output)
    if found is None:
        raise AssertionError(f"no 'listening on ... (bound to ...)' line in:\n{output}")
    return int(found.group(1))


JS = Path(__file__).resolve().parent / "js"


def requirePusherJS() -> str:
    """
    The path of node, once node and the npm packages of tests/js (pusher-js) are there; skips
    the test (fails it in CI) otherwise.
    """
    node = shutil.which("node")
    if node is None:
        requireService("node", "is not installed")
    if not (JS / "node_modules" / "pusher-js").is_dir():
        requireService("pusher-js", "is not installed: run npm ci --prefix tests/js")
    return node


class KeptConn:
    """A registry subscriber of app C{appId} whose outbound keeps what it is sent."""

    def __init__(self, n: int, appId: str) -> None:
        from pushsvc.fanout.writer import Outbound

        self.socketId = f"1.{n}"
        self.appId = appId
        self.writes: list[bytes] = []
        self.outbound: Outbound | None = Outbound(self.writes.append, 10**6, lambda: None)
        self.closed: int | None = None  # the close code it was sent, if any

    def closeWith(self, code: int, reason: str) -> None:
        self.closed = code
