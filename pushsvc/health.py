"""
C{/healthz} (liveness and readiness). The public listener's says only C{status} (and the code);
the admin listener's names every dependency and what is wrong with it (store path or host, Redis
address). C{/metrics} is on the admin listener (L{pushsvc.admin.metrics}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
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
