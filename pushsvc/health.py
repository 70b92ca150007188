"""
C{/healthz} (liveness and readiness). The public listener's says only C{status} (and the code);
the admin listener's names every dependency and what is wrong with it (store path or host, Redis
address). C{/metrics} is on the admin listener (L{pushsvc.admin.metrics}); L{MetricsResource}
writes C{(name, help, type, value)} figures as text where no registry is wanted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import Request

from pushsvc import __version__
from pushsvc.http.util import JSONResource


class HealthResource(JSONResource):
    """
    200 C{{"status": "ok", ...}} when every dependency answers; 503 with
    C{{"status": "degraded", "<dependency>": "<what is wrong>"}} otherwise (the process still
    serves what does not need that dependency). Unless C{detailed}, only C{{"status": ...}}.
    """

    def __init__(
        self,
        checks: Callable[[], Deferred[dict[str, str]]],
        detailed: bool = True,
    ) -> None:
        super().__init__()
        self.checks = checks
        self.detailed = detailed

    async def handle_GET(self, request: Request) -> tuple[int, Any]:
        results = await self.checks()
        ok = all(v == "ok" for v in results.values())
        body: dict[str, Any] = {"status": "ok" if ok else "degraded"}
        if self.detailed:
            body["version"] = __version__
            body.update(results)
        return (200 if ok else 503), body


class MetricsResource(Resource):
    """Counters and gauges as Prometheus text; C{collect} returns C{[(name, help, type, value)]}."""

    isLeaf = True

    def __init__(self, collect: Callable[[], list[tuple[str, str, str, float]]]) -> None:
        super().__init__()
        self.collect = collect

    def render_GET(self, request: Request) -> bytes:
        lines = []
        described = set()
        for name, help, kind, value in self.collect():
            base = name.partition("{")[0]  # a labelled series: HELP and TYPE once per name
            if base not in described:
                described.add(base)
                lines.append(f"# HELP {base} {help}")
                lines.append(f"# TYPE {base} {kind}")
            lines.append(f"{name} {value}")
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return ("\n".join(lines) + "\n").encode("utf-8")
