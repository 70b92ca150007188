"""
Application credentials: each app has an id, a public key and a secret.

One app is configured by default. Credentials come from options, from a secret file or the
``PUSHSVC_APP_SECRET`` environment variable, or are generated on first start and kept in the data
directory so that later starts reuse them. Every file kept there has mode 0600 (an existing looser
one is tightened, with a log line): see L{pushsvc.filemodes}.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from twisted.logger import Logger

from pushsvc.filemodes import privateFile, writePrivateFile
from pushsvc.webhooks.format import WebhookTarget

log = Logger()

SECRET_ENV = "PUSHSVC_APP_SECRET"
DEFAULT_MAX_DATA_BYTES = 10 * 1024


@dataclass(frozen=True)
class App:
    """One application: publishes and subscriptions are signed with its secret."""

    id: str
    key: str
    secret: str = field(repr=False)
    enabled: bool = True
    maxDataBytes: int = DEFAULT_MAX_DATA_BYTES  # max_event_bytes: HTTP API 413 above
    # The limits of an apps file (pushsvc.appsfile); the defaults are Pusher's.
    maxConnections: int = 0  # 0: no limit; over it the connection is closed with 4004
    # None: the process's setting (PushSettings: 100 and 10, Pusher's).
    maxSubscriptionsPerConnection: int | None = None
    maxPresenceMembers: int = 100  # the next member's subscription fails
    maxChannelNameLength: int = 164
    maxClientEventsPerSecond: int | None = None  # per connection; pusher:error 4301 above
    maxApiRequestsPerSecond: int = 0  # per app in this process; 0: no limit; 429 above
    allowedOrigins: tuple[str, ...] = ()  # empty: any (then --allowed-origins applies)
    userAuthenticationTimeout: float = 0.0  # > 0: not signed in by then: closed with 4009
    webhooks: tuple[WebhookTarget, ...] = ()  # see pushsvc.webhooks.format.parseWebhooks
    subscriptionCount: bool = False  # send pusher_internal:subscription_count (pushsvc.counts)


class Apps:
    """
    The configured apps, looked up by id (HTTP API) or by key (WebSocket path).

    One object shared by every part; L{replace} swaps the whole set at once (an apps file
    reloaded), so a lookup sees either the old set or the new one, never half of each.
    """

    def __init__(self, apps: Iterable[App], chatAppId: str | None = None) -> None:
        self.replace(apps, chatAppId)

    def replace(self, apps: Iterable[App], chatAppId: str | None = None) -> None:
        """Serve C{apps} from now on; C{chatAppId} (default: the first) is L{default}."""
        everyApp = list(apps)
        if not everyApp:
            raise ValueError("at least one app is needed")
        byId = {a.id: a for a in everyApp}
        default = byId.get(chatAppId, everyApp[0]) if chatAppId is not None else everyApp[0]
        self._all, self._byId, self._default = everyApp, byId, default
        self._byKey = {a.key: a for a in everyApp}

    @property
    def default(self) -> App:
        """The app of the chat and of C{/notify} (the first, or the apps file's C{chat_app})."""
        return self._default

    def __iter__(self) -> Iterator[App]:
        return iter(self._all)

    def __len__(self) -> int:
        return len(self._all)

    def byId(self, appId: str) -> App | None:
        return self._byId.get(appId)

    def byKey(self, key: str) -> App | None:
        return self._byKey.get(key)


def tightenPrivateFiles(*paths: Path) -> None:
    """Take group and other access off those of C{paths} that exist, logging each change."""
    for path in paths:
        for change in privateFile(path):
            log.warn("{change}: key and secret files are for this user only", change=change)


def readSecretFile(path: Path) -> str:
    """The secret kept in C{path}, stripped of surrounding white space."""
    secret = path.read_text().strip()
    if not secret:
        raise ValueError(f"the secret file {path} is empty")
    return secret


def loadOrCreateApp(
    dataDir: Path,
    appId: str | None,
    appKey: str | None,
    secretFile: Path | None,
    environ: Mapping[str, str],
    maxDataBytes: int = DEFAULT_MAX_DATA_BYTES,
) -> tuple[App, list[str]]:
    """
    The app from options, environment or the data directory, generating what is missing.

    @return: the app and what was generated now, of C{"id"}, C{"key"} and C{"secret"}.
    """
    credsPath = dataDir / "app.json"
    secretPath = dataDir / "app-secret"
    tightenPrivateFiles(credsPath, secretPath)
    stored: dict[str, str] = {}
    if credsPath.exists():
        stored = json.loads(credsPath.read_text())
    generated: list[str] = []
    if not (appId or stored.get("app_id")):
        generated.append("id")
    if not (appKey or stored.get("app_key")):
        generated.append("key")
    if secretFile is not None:
        secret = readSecretFile(secretFile)
    elif environ.get(SECRET_ENV):
        secret = environ[SECRET_ENV].strip()
    elif secretPath.exists():
        secret = readSecretFile(secretPath)
    else:
        secret = secrets.token_hex(16)
        writePrivateFile(secretPath, secret + "\n")
        generated.append("secret")
    appId = appId or stored.get("app_id") or str(secrets.randbelow(900000) + 100000)
    appKey = appKey or stored.get("app_key") or secrets.token_hex(10)
    if stored.get("app_id") != appId or stored.get("app_key") != appKey:
        writePrivateFile(credsPath, json.dumps({"app_id": appId, "app_key": appKey}) + "\n")
    return App(id=appId, key=appKey, secret=secret, maxDataBytes=maxDataBytes), generated


def loadOrCreateKey(dataDir: Path, name: str, keyFile: Path | None, envValue: str | None) -> bytes:
    """
    A server-side key (e.g. for session cookies): from a file, the environment, or generated once
    into C{dataDir/name} with mode 0600.
    """
    if keyFile is not None:
        return readSecretFile(keyFile).encode()
    if envValue:
        return envValue.strip().encode()
    path = dataDir / name
    tightenPrivateFiles(path)
    if path.exists():
        return readSecretFile(path).encode()
    key = secrets.token_hex(32)
    writePrivateFile(path, key + "\n")
    return key.encode()
