"""
The apps file (C{--apps-file PATH}): several apps in one service, each with its own limits.

TOML, read with C{tomllib}; one C{[[app]]} table per app, and optionally a top-level
C{chat_app = "<id>"} naming the app the chat uses (default: the first)::

    chat_app = "1"

    [[app]]
    id = "1"                                   # required, unique
    key = "app1-key"                           # required, unique
    secret_file = "/etc/pushsvc/app1.secret"   # or secret = "..." (then this file must not be
                                               # readable by group or others)
    enabled = true
    max_connections = 10000                    # 0: no limit; over it: close 4004
    max_subscriptions_per_connection = 100
    max_presence_members = 100
    max_channel_name_length = 164
    max_event_bytes = 10240
    max_client_events_per_second = 10
    max_api_requests_per_second = 0            # 0: no limit; over it: 429
    allowed_origins = []                       # empty: any
    user_authentication_timeout = 0            # seconds; 0: off; else close 4009

Every problem (unknown key, duplicate id or key, wrong type, missing secret file) is one
L{AppsFileError} whose text names the file, the app and the field.

Extending the schema: a new optional per-app field is one row in L{FIELDS} (its TOML name, the
L{pushsvc.apps.App} attribute it fills, and a parser that returns the value or raises
C{ValueError} with what is wrong) plus the attribute, with its default, at the end of C{App}. A
parser may take a table or an array of tables (e.g. C{webhooks = [{url = ...}]}): it gets the
value as C{tomllib} read it.
"""

from __future__ import annotations

import re
import stat
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pushsvc.apps import App, readSecretFile
from pushsvc.frames import CLOSE_APP_DISABLED, CLOSE_UNKNOWN_KEY
from pushsvc.webhooks.format import parseWebhooks


class AppsFileError(ValueError):
    """The apps file cannot be used; C{str()} is one line naming the file, app and field."""


@dataclass(frozen=True)
class AppsConfig:
    """What an apps file holds: the apps in file order and the chat's app id."""

    apps: tuple[App, ...]
    chatApp: str


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("must be a whole number, 0 or more")
    return value


def _positive(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("must be a whole number greater than 0")
    return value


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e9:
        raise ValueError("must be a number of seconds, 0 or more")
    return float(value)


def _origins(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(o, str) for o in value):
        raise ValueError('must be a list of origins like "https://example.com"')
    for origin in value:
        if not origin.startswith(("http://", "https://")):
            raise ValueError(f"{origin!r} must start with http:// or https://")
    return tuple(o.rstrip("/") for o in value)


@dataclass(frozen=True)
class Field:
    """One optional per-app field: the L{App} attribute it fills and its parser."""

    attribute: str
    parse: Callable[[object], Any]


# TOML name -> Field. Add new optional fields here (see the module docstring).
FIELDS: dict[str, Field] = {
    "enabled": Field("enabled", _bool),
    "max_connections": Field("maxConnections", _count),
    "max_subscriptions_per_connection": Field("maxSubscriptionsPerConnection", _positive),
    "max_presence_members": Field("maxPresenceMembers", _positive),
    "max_channel_name_length": Field("maxChannelNameLength", _positive),
    "max_event_bytes": Field("maxDataBytes", _positive),
    "max_client_events_per_second": Field("maxClientEventsPerSecond", _count),
    "max_api_requests_per_second": Field("maxApiRequestsPerSecond", _count),
    "allowed_origins": Field("allowedOrigins", _origins),
    "user_authentication_timeout": Field("userAuthenticationTimeout", _seconds),
    "webhooks": Field("webhooks", parseWebhooks),  # [{url, events, headers}] or [url, ...]
    "subscription_count": Field("subscriptionCount", _bool),
}
REQUIRED = ("id", "key")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
SECRET_FIELDS = ("secret", "secret_file")
TOP_LEVEL = ("app", "chat_app")


def _looselyReadable(path: Path) -> bool:
    return bool(path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))


def parseApps(path: Path, text: str, secretInFileAllowed: bool) -> AppsConfig:
    """
    The apps described by C{text}, the contents of C{path}. Relative C{secret_file} paths are
    taken from C{path}'s directory.

    @param secretInFileAllowed: whether C{secret = "..."} may be used (the file is private).
    @raise AppsFileError: what is wrong, in one line.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise AppsFileError(f"{path}: not valid TOML: {e}") from None
    for name in doc:
        if name not in TOP_LEVEL:
            raise AppsFileError(
                f"{path}: unknown top-level key {name!r} (known: {', '.join(TOP_LEVEL)})"
            )
    tables = doc.get("app")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise AppsFileError(f"{path}: no [[app]] table: describe at least one app")
    apps: list[App] = []
    ids: set[str] = set()
    keys: set[str] = set()
    for number, table in enumerate(tables, 1):
        app = _parseApp(path, number, table, secretInFileAllowed)
        where = f"{path}: app {app.id!r}"
        if app.id in ids:
            raise AppsFileError(f"{where}: id: another app has this id")
        if app.key in keys:
            raise AppsFileError(f"{where}: key: another app has this key")
        ids.add(app.id)
        keys.add(app.key)
        apps.append(app)
    chatApp = doc.get("chat_app", apps[0].id)
    if not isinstance(chatApp, str) or chatApp not in ids:
        raise AppsFileError(f"{path}: chat_app: {chatApp!r} is not the id of an app in the file")
    return AppsConfig(tuple(apps), chatApp)


def _parseApp(path: Path, number: int, table: Mapping[str, Any], secretInFileAllowed: bool) -> App:
    appId = table.get("id")
    where = (
        f"{path}: app {appId!r}" if isinstance(appId, str) and appId else f"{path}: app #{number}"
    )
    for name in REQUIRED:
        value = table.get(name)
        if not isinstance(value, str) or not _NAME.fullmatch(value):
            # No ":" or "{": an id is part of every Redis key and channel name of its app, and
            # must not make another app's (isolation); a key is part of the WebSocket URL.
            raise AppsFileError(
                f"{where}: {name}: required, 1 to 64 letters, digits and - _ . characters"
            )
    for name in table:
        if name not in FIELDS and name not in REQUIRED and name not in SECRET_FIELDS:
            raise AppsFileError(f"{where}: {name}: unknown field")
    values: dict[str, Any] = {}
    for name, spec in FIELDS.items():
        if name in table:
            try:
                values[spec.attribute] = spec.parse(table[name])
            except ValueError as e:
                raise AppsFileError(f"{where}: {name}: {e}") from None
    return App(
        id=table["id"],
        key=table["key"],
        secret=_secret(path, where, table, secretInFileAllowed),
        **values,
    )


def _secret(path: Path, where: str, table: Mapping[str, Any], allowed: bool) -> str:
    given = [name for name in SECRET_FIELDS if name in table]
    if len(given) != 1:
        raise AppsFileError(f"{where}: secret: give exactly one of secret_file and secret")
    value = table[given[0]]
    if not isinstance(value, str) or not value.strip():
        raise AppsFileError(f"{where}: {given[0]}: must be a non-empty string")
    if given[0] == "secret":
        if not allowed:
            raise AppsFileError(
                f"{where}: secret: the file holds a secret but group or others may read it; "
                f"chmod 600 {path}, or use secret_file"
            )
        return value.strip()
    secretPath = Path(value).expanduser()
    if not secretPath.is_absolute():
        secretPath = path.parent / secretPath
    try:
        return readSecretFile(secretPath)
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise AppsFileError(f"{where}: secret_file: cannot read {secretPath}: {reason}") from None


def loadAppsFile(path: Path) -> AppsConfig:
    """
    Read and check the apps file at C{path} (blocking: a small local file, read at start-up and
    on reload).

    @raise AppsFileError: what is wrong, in one line.
    """
    try:
        text = path.read_text(encoding="utf-8")
        private = not _looselyReadable(path)
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise AppsFileError(f"{path}: cannot read the apps file: {reason}") from None
    return parseApps(path, text, private)


@dataclass(frozen=True)
class Changes:
    """What a reload changes: the apps added, and the connections to close (app id -> code)."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    disabled: tuple[str, ...]
    changed: tuple[str, ...]  # limits, secret or key changed (a new key counts as removed too)
    close: Mapping[str, tuple[int, str]]

    def summary(self) -> str:
        """One line: C{added 4; removed 2; disabled 3; changed 1}, or C{no change}."""
        parts = [
            f"{what} {', '.join(ids)}"
            for what, ids in (
                ("added", self.added),
                ("removed", self.removed),
                ("disabled", self.disabled),
                ("changed", self.changed),
            )
            if ids
        ]
        return "; ".join(parts) or "no change"


def diffApps(old: Iterable[App], new: Iterable[App]) -> Changes:
    """
    The difference between the running apps C{old} and the reloaded C{new}: connections of a
    removed app, or of one whose key changed, close with 4001 (unknown key, as Pusher would);
    those of an app now disabled with 4003. Other apps' connections are left alone: changed
    limits apply to new connections and subscriptions, a new secret to new signatures.
    """
    before = {a.id: a for a in old}
    after = {a.id: a for a in new}
    close: dict[str, tuple[int, str]] = {}
    removed = tuple(i for i in before if i not in after)
    for appId in removed:
        close[appId] = (CLOSE_UNKNOWN_KEY, "the app was removed")
    disabled = []
    changed = []
    for appId, app in after.items():
        was = before.get(appId)
        if was is None or was == app:
            continue
        if was.key != app.key:
            close[appId] = (CLOSE_UNKNOWN_KEY, "the app key was changed")
        elif was.enabled and not app.enabled:
            close[appId] = (CLOSE_APP_DISABLED, "the app is disabled")
        if was.enabled and not app.enabled:
            disabled.append(appId)
        else:
            changed.append(appId)
    return Changes(
        added=tuple(i for i in after if i not in before),
        removed=removed,
        disabled=tuple(disabled),
        changed=tuple(changed),
        close=close,
    )
