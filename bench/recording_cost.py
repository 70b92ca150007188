"""
What recording costs per publish, in process: N signed HTTP API publishes (StubTreq, no sockets)
to a channel of 1,000 in-memory subscribers, with the service's recording wrappers and without,
CPU time per publish (best of several rounds). The subscribers' writes cost nothing here (no
syscalls), so the share recording takes is larger than on a real server: an upper bound.

    python bench/recording_cost.py [--subscribers 1000] [--publishes 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from treq.testing import StubTreq  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.web.resource import Resource  # noqa: E402

from pushsvc.admin.metrics import Metrics, perAppFigures  # noqa: E402
from pushsvc.api import makeApiResource  # noqa: E402
from pushsvc.apiauth import apiSignature, bodyMd5  # noqa: E402
from pushsvc.apps import App, Apps  # noqa: E402
from pushsvc.fanout.registry import Registry  # noqa: E402
from pushsvc.fanout.writer import Outbound  # noqa: E402
from pushsvc.hub import Hub  # noqa: E402
from pushsvc.interfaces import IBroker, PushSettings  # noqa: E402
from pushsvc.local import LocalBroker  # noqa: E402
from pushsvc.recording import Recorder, classifier  # noqa: E402
from pushsvc.recording.wrap import (  # noqa: E402
    RecordingBroker,
    RecordingRoot,
    instrumentRegistry,
    recordedCheck,
)

APP = App("1", "key", "secret")


class Sub:
    def __init__(self, n: int) -> None:
        self.socketId = f"1.{n}"
        self.appId = APP.id
        self.outbound = Outbound(lambda frame: None, 10**9, lambda: None)

    def closeWith(self, code: int, reason: str) -> None:
        pass


def build(recording: bool, subscribers: int) -> tuple[Clock, Any]:
    clock = Clock()
    clock.advance(1_800_000_000)
    apps = Apps([APP])
    registry = Registry(PushSettings(), clock)
    broker: IBroker = LocalBroker(clock)
    recorder = Recorder(clock) if recording else None
    if recorder is not None:
        instrumentRegistry(registry, recorder)
        broker = RecordingBroker(broker, recorder, "in-process")
        Metrics(lambda: [], lambda: perAppFigures(registry), recorder)  # its histograms observe
    hub = Hub(registry, broker, clock)
    for i in range(subscribers):
        sub = Sub(i)
        hub.connect(sub)  # type: ignore[arg-type]
        hub.subscribe(sub, "news")  # type: ignore[arg-type]
    api = makeApiResource(apps, hub, clock.seconds)
    tree: Resource = Resource()
    tree.putChild(b"apps", api)
    if recorder is not None:
        api.verify = recordedCheck(recorder, "signature", api.verify)
        tree = RecordingRoot(tree, recorder, classifier(apps))
    return clock, StubTreq(tree)


def run(recording: bool, subscribers: int, publishes: int) -> float:
    """CPU seconds per publish."""
    clock, http = build(recording, subscribers)
    body = json.dumps({"name": "e", "channel": "news", "data": "x" * 100}).encode()
    path = f"/apps/{APP.id}/events"
    params = {
        "auth_key": APP.key,
        "auth_timestamp": str(int(clock.seconds())),
        "auth_version": "1.0",
        "body_md5": bodyMd5(body),
    }
    params["auth_signature"] = apiSignature(APP.secret, "POST", path, params)
    url = "http://bench.test" + path + "?" + "&".join(f"{k}={v}" for k, v in params.items())
    headers = {"content-type": ["application/json"]}
    start = time.process_time()
    for _ in range(publishes):
        http.post(url, data=body, headers=headers)
        clock.advance(0.01)  # quiet again: each fan-out is written at once, as under light load
    return (time.process_time() - start) / publishes


def addedWork(publishes: int = 20000) -> float:
    """
    CPU seconds recording adds to one publish, measured on its own (stable on a busy machine):
    a request record begun and ended, the signature check, broker publish and fan-out each
    wrapped around a call that does nothing, the console's envelope kept, the histograms fed.
    """
    from twisted.internet.defer import succeed

    clock = Clock()
    recorder = Recorder(clock)
    Metrics(lambda: [], lambda: {}, recorder)

    class Nothing:
        deliver = staticmethod(lambda appId, channel, payload, exceptSocketId=None: 1000)
        subscribe = unsubscribe = addConnection = removeConnection = staticmethod(lambda *a: None)
        _dirty: list[Any] = []

    class Broker(LocalBroker):
        def publish(self, *a: Any) -> Any:
            registry.deliver("1", "news", b"x" * 100, None)
            return succeed(None)

    registry: Any = Nothing()
    instrumentRegistry(registry, recorder)
    broker = RecordingBroker(Broker(clock), recorder, "in-process")
    check = recordedCheck(recorder, "signature", lambda *a: None)
    envelope = b'["e","1","news","ev","' + b"x" * 100 + b'",null,null]'
    bare = Broker(clock)

    def once(recorded: bool) -> None:
        if recorded:
            record = recorder.begin("POST", "/apps/1/events", "/apps/{app}/events", "1")
            token = recorder.enter(record)
            check()
            broker.publish("1", "news", envelope)
            recorder.leave(token)
            recorder.end(record, 200)
        else:
            bare.publish("1", "news", envelope)

    best = {}
    for recorded in (False, True):
        times = []
        for _ in range(5):
            start = time.process_time()
            for _ in range(publishes):
                once(recorded)
            times.append((time.process_time() - start) / publishes)
        best[recorded] = min(times)
    return best[True] - best[False]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--subscribers", type=int, default=1000)
    p.add_argument("--publishes", type=int, default=300)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    best = {True: float("inf"), False: float("inf")}
    for _ in range(args.rounds):
        for recording in (False, True):
            best[recording] = min(best[recording], run(recording, args.subscribers, args.publishes))
    off, on = best[False], best[True]
    added = addedWork()
    sys.stdout.write(
        f"recording adds {added * 1e6:.1f} us of CPU to each publish (measured on its own), "
        f"{100 * added / off:.2f}% of a publish to {args.subscribers} subscribers here\n"
    )
    sys.stdout.write(
        f"{args.subscribers} subscribers: {off * 1e6:.0f} us CPU per publish without recording, "
        f"{on * 1e6:.0f} us with; +{(on - off) * 1e6:.1f} us, {100 * (on - off) / off:+.2f}% "
        f"per delivery\n"
    )


if __name__ == "__main__":
    main()
