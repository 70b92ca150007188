"""
The recording part of the inside view: L{Recorder} (the ring and the aggregates) and the
wrappers that feed it (L{pushsvc.recording.wrap}). L{classifier} names the endpoint of a path
with a bounded set of names (they become metric labels).
"""

from __future__ import annotations

from pushsvc.apps import Apps
from pushsvc.recording.recorder import DEFAULT_SIZE, Call, Recorder, RequestRecord
from pushsvc.recording.wrap import Classify

__all__ = ["DEFAULT_SIZE", "Call", "Recorder", "RequestRecord", "classifier"]

_API = {"config", "session", "rooms", "pusher"}


def classifier(apps: Apps) -> Classify:
    """C{path -> (endpoint, app id or None)}; only known apps' ids are named."""

    def classify(path: str) -> tuple[str, str | None]:
        parts = path.split("/")
        head = parts[1] if len(parts) > 1 else ""
        if head == "apps" and len(parts) > 2:
            app = apps.byId(parts[2])
            rest = parts[3] if len(parts) > 3 else ""
            if rest not in ("events", "batch_events", "channels", "users"):
                rest = "other"
            return f"/apps/{{app}}/{rest}", app.id if app is not None else None
        if head == "app" and len(parts) > 2:
            app = apps.byKey(parts[2])
            return "/app/{key}", app.id if app is not None else None
        if head == "notify":
            return "/notify/{channel}", apps.default.id
        if head == "api":
            sub = parts[2] if len(parts) > 2 else ""
            if sub == "rooms" and len(parts) > 4 and parts[4] == "messages":
                return "/api/rooms/{room}/messages", apps.default.id
            return (f"/api/{sub}" if sub in _API else "/api/other"), apps.default.id
        if head == "users":
            return "/users", None
        if head in ("healthz", "metrics"):
            return f"/{head}", None
        return "static", None

    return classify
