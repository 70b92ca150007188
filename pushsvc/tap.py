"""
C{twistd pushsvc}: command-line options and the service they describe.

Only this module touches the global reactor (to validate endpoint strings and to hand the
reactor to the service). L{makeService} creates nothing: files, ports and databases are opened
by L{pushsvc.service.PushService.startService}. Before twistd forks a daemon, it checks (without
creating anything) what usually fails at start-up, so that the daemon's waiting parent can say
so in one line (L{pushsvc.preflight}).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from twisted.application.service import IService
from twisted.internet.endpoints import serverFromString
from twisted.logger import ILogObserver, jsonFileLogObserver
from twisted.python import usage
from zope.interface import implementer

from pushsvc import __version__
from pushsvc.preflight import preflight
from pushsvc.service import PushService, ServiceConfig
from pushsvc.store import validateStoreURL
from pushsvc.webhooks.format import WebhookConfigError, checkURL

DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"
DEFAULT_ADMIN_LISTEN = "tcp:8081:interface=127.0.0.1"


def _endpoint(description: str) -> str:
    from twisted.internet import reactor

    try:
        serverFromString(reactor, description)
    except Exception as e:
        raise usage.UsageError(
            f"--listen {description!r} is not a Twisted server endpoint "
            f"(e.g. tcp:8080:interface=127.0.0.1): {e}"
        ) from None
    return description


def _positiveInt(name: str):  # type: ignore[no-untyped-def]  # returns a coerce function
    def coerce(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"{name} must be a whole number, not {value!r}") from None
        if number <= 0:
            raise ValueError(f"{name} must be greater than 0")
        return number

    coerce.coerceDoc = "A whole number greater than 0."  # type: ignore[attr-defined]  # usage.Options reads coerceDoc off the function
    return coerce


def _countOrZero(name: str, zero: str):  # type: ignore[no-untyped-def]  # returns a coerce function
    def coerce(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"{name} must be a whole number, not {value!r}") from None
        if number < 0:
            raise ValueError(f"{name} must be 0 ({zero}) or more")
        return number

    coerce.coerceDoc = f"A whole number; 0 for {zero}."  # type: ignore[attr-defined]  # usage.Options reads coerceDoc off the function
    return coerce


def _trustedProxies(value: str) -> tuple[str, ...]:
    from pushsvc.http.proxy import TrustedProxies

    try:
        return TrustedProxies.parse(value).entries()
    except ValueError as e:
        raise ValueError(f"--trusted-proxies: {e}") from None


_trustedProxies.coerceDoc = "Comma-separated IPs or CIDR networks, e.g. 10.0.0.1,10.1.0.0/16."  # type: ignore[attr-defined]  # read by usage.Options


def _positiveSeconds(name: str):  # type: ignore[no-untyped-def]  # returns a coerce function
    def coerce(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{name} must be a number of seconds, not {value!r}") from None
        if not 0 < number < float("inf"):
            raise ValueError(f"{name} must be a number of seconds greater than 0")
        return number

    coerce.coerceDoc = "Seconds, greater than 0."  # type: ignore[attr-defined]  # usage.Options reads coerceDoc off the function
    return coerce


def _secondsOrZero(name: str):  # type: ignore[no-untyped-def]
    def coerce(value: str) -> float:
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds <= 3600:
            raise ValueError(f"{name} must be a number of seconds from 0 to 3600, not {value!r}")
        return seconds

    coerce.coerceDoc = "Seconds, 0 to 3600."  # type: ignore[attr-defined]
    return coerce


def _webhookURL(value: str) -> str:
    try:
        return checkURL(value)
    except WebhookConfigError as e:
        raise usage.UsageError(f"--webhook-url: {e}.") from None


def _adminListen(value: str) -> str:
    if value.strip().lower() == "none":
        return "none"
    from twisted.internet import reactor

    try:
        serverFromString(reactor, value)
    except Exception as e:
        raise ValueError(
            f"--admin-listen {value!r} is not a Twisted server endpoint "
            f"(e.g. {DEFAULT_ADMIN_LISTEN}) or none: {e}"
        ) from None
    return value


_adminListen.coerceDoc = f"A server endpoint (default {DEFAULT_ADMIN_LISTEN}), or none."  # type: ignore[attr-defined]


def _existingFile(value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"{value} is not a readable file")
    return path


def _storeURL(value: str) -> str:
    url = validateStoreURL(value)
    scheme, _, path = url.partition(":")
    if scheme.lower() == "sqlite" and path:
        # A relative path is inside the data directory, which pushsvc creates; it creates
        # nothing else, so an absolute path's directory must be there already.
        where = Path(path).expanduser()
        if where.is_absolute() and not where.parent.is_dir():
            raise ValueError(
                f"the directory {where.parent} does not exist; create it first "
                "(pushsvc creates only its --data-dir)"
            )
    return url


def _appsFile(value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"--apps-file {value} is not a readable file")
    return path.resolve()  # read again on SIGHUP, whatever the working directory is then


_appsFile.coerceDoc = "A TOML file of [[app]] tables (see the README, Apps)."  # type: ignore[attr-defined]


def _logFormat(value: str) -> str:
    if value not in ("text", "json"):
        raise ValueError(f"--log-format must be text or json, not {value!r}")
    return value


def _gcFreeze(value: str) -> str:
    if value not in GC_FREEZE:
        raise ValueError(f"--gc-freeze must be one of {', '.join(GC_FREEZE)}, not {value!r}")
    return value


GC_FREEZE = ("survivors", "startup", "off")
_gcFreeze.coerceDoc = (  # type: ignore[attr-defined]  # read by usage.Options
    "survivors: what start-up and each full collection leave; startup: only what start-up "
    "leaves; off."
)


_logFormat.coerceDoc = "text (twistd's own), or json: one JSON object a line."  # type: ignore[attr-defined]  # read by usage.Options


@implementer(ILogObserver)
class _JSONLog:
    """
    twistd's log destination (its C{--logfile}, or stdout with C{-n}) written as one JSON object
    a line (C{twisted.logger.eventAsJSON}); the file is opened at the first event.
    """

    def __init__(self, twistdOptions: Any) -> None:
        get = twistdOptions.get if twistdOptions is not None else {}.get
        name = get("logfile")
        self._name: str | None = None
        self._stream: Any = sys.stdout  # the real one: twistd redirects it once logging begins
        if not (name == "-" or (not name and (get("nodaemon") or twistdOptions is None))):
            self._name = name or "twistd.log"
        self._observer: Any = None

    def __call__(self, event: dict[str, Any]) -> None:
        if self._observer is None:
            out = self._stream
            if self._name is not None:
                from twisted.python.logfile import LogFile

                out = LogFile.fromFullPath(self._name)
            self._observer = jsonFileLogObserver(out, recordSeparator="")
        self._observer(event)


def _redis(value: str) -> str:
    """A redis:// URL or a Twisted client endpoint that parses; nothing is connected here."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import clientFromString

    from pushsvc.redis.address import parseRedisAddress, redacted

    address = parseRedisAddress(value)
    try:
        clientFromString(reactor, address.endpoint)
    except Exception as e:
        # The error may quote the endpoint, which holds no password; the value itself may.
        raise ValueError(
            f"{redacted(value)!r} is not a Redis address (redis://127.0.0.1:6379/0 or "
            f"tcp:127.0.0.1:6379): {e}"
        ) from None
    return value


_redis.coerceDoc = (  # type: ignore[attr-defined]  # read by usage.Options
    "redis://[user:password@]host[:port][/db], rediss://..., or an endpoint like tcp:host:6379."
)


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Runs the pushsvc push service and its chat app. With no options it serves "
        "http://localhost:8080 with SQLite in ./pushsvc-data and generated app credentials. "
        "The app secret is read from --app-secret-file or the PUSHSVC_APP_SECRET environment "
        "variable, never from the command line."
    )

    optFlags: list[list[Any]] = [
        [
            "log-publishes",
            None,
            "Write successful HTTP API publishes to the access log too (failed ones always are).",
        ],
        [
            "quiet-websockets",
            None,
            "Do not log each WebSocket opened, refused and closed (for busy deployments).",
        ],
        [
            "subscription-count",
            None,
            "Send pusher_internal:subscription_count to the default app's channels.",
        ],
        ["no-recording", None, "Do not record requests and their calls (the inside view)."],
    ]

    optParameters: list[list[Any]] = [
        ["data-dir", "d", "pushsvc-data", "Directory for the SQLite store and generated keys."],
        [
            "store",
            "s",
            None,
            "Message store URL: sqlite:PATH, postgresql://... or memory:.",
            _storeURL,
        ],
        [
            "redis",
            None,
            None,
            "Redis to share events and presence with the other pushsvc processes.",
            _redis,
        ],
        ["app-id", None, None, "App id (default: generated once and kept in the data dir)."],
        ["app-key", None, None, "App key (default: generated once and kept in the data dir)."],
        ["app-secret-file", None, None, "File holding the app secret.", _existingFile],
        [
            "session-key-file",
            None,
            None,
            "File holding the key that signs chat session cookies (or PUSHSVC_SESSION_KEY).",
            _existingFile,
        ],
        [
            "max-data-bytes",
            None,
            10240,
            "Largest event data accepted by the HTTP API, in bytes.",
            _positiveInt("--max-data-bytes"),
        ],
        [
            "max-outbound-bytes",
            None,
            1024 * 1024,
            "Unsent bytes after which a slow WebSocket client is closed with 4100.",
            _positiveInt("--max-outbound-bytes"),
        ],
        [
            "activity-timeout",
            None,
            120,
            "Seconds of silence after which clients ping (told to clients on connect).",
            _positiveInt("--activity-timeout"),
        ],
        [
            "allowed-origins",
            None,
            "",
            "Comma-separated WebSocket origins allowed (default: any), e.g. https://example.com.",
        ],
        [
            "chat-messages-per-minute",
            None,
            60,
            "Chat messages one session may post a minute (bursts of up to 20); 429 above it.",
            _positiveInt("--chat-messages-per-minute"),
        ],
        [
            "max-connections",
            None,
            0,
            "Connections (HTTP and WebSocket) held at once; 0: what the open-file limit allows.",
            _countOrZero("--max-connections", "derived from the open-file limit"),
        ],
        [
            "max-connections-per-ip",
            None,
            1000,
            "Connections held at once per client address; 0: no cap.",
            _countOrZero("--max-connections-per-ip", "no cap"),
        ],
        [
            "trusted-proxies",
            None,
            (),
            "Comma-separated proxy IPs/networks whose X-Forwarded-For and Forwarded are believed.",
            _trustedProxies,
        ],
        [
            "header-timeout",
            None,
            10.0,
            "Seconds a client has to send a request's line and headers (WebSocket handshakes too).",
            _positiveSeconds("--header-timeout"),
        ],
        [
            "body-min-rate",
            None,
            1024,
            "Bytes a second a request body must arrive at, after --header-timeout of grace.",
            _positiveInt("--body-min-rate"),
        ],
        [
            "idle-timeout",
            None,
            60.0,
            "Seconds an idle keep-alive connection, or one not reading its replies, is kept.",
            _positiveSeconds("--idle-timeout"),
        ],
        [
            "gc-freeze",
            None,
            "survivors",
            "Keep objects out of the garbage collector's walks: survivors, startup or off.",
            _gcFreeze,
        ],
        [
            "log-format",
            None,
            "text",
            "text, or json: one JSON object a line in twistd's log, for log shippers.",
            _logFormat,
        ],
        [
            "webhook-debounce",
            None,
            3.0,
            "Seconds channel_vacated and member_removed webhooks wait (dropped if back meanwhile).",
            _secondsOrZero("--webhook-debounce"),
        ],
        [
            "apps-file",
            None,
            None,
            "TOML file of the apps to serve, each with its own limits; reloaded on SIGHUP.",
            _appsFile,
        ],
        [
            "admin-listen",
            None,
            None,
            f"Endpoint of the admin listener (dashboard, /metrics, detailed health), default "
            f"{DEFAULT_ADMIN_LISTEN}; none: no admin listener. Beyond loopback it needs a token.",
            _adminListen,
        ],
        [
            "admin-token-file",
            None,
            None,
            "File holding the admin token (default: generated once into the data dir, mode 0600).",
            _existingFile,
        ],
        [
            "recorded-requests",
            None,
            1000,
            "How many recent requests the recorder keeps, with their calls.",
            _positiveInt("--recorded-requests"),
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["webhook-url"] = []

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Parse, turning a usage error into a one-line message and exit status 1 (twistd would
        otherwise print the whole help text before it).
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            raise SystemExit(f"twistd pushsvc: {e} (see: twistd pushsvc --help)") from None

    def opt_listen(self, description: str) -> None:
        """Endpoint to serve HTTP and WebSocket on (repeatable; default tcp:8080 on loopback)."""
        self["listen"].append(_endpoint(description))

    opt_l = opt_listen

    def opt_webhook_url(self, url: str) -> None:
        """URL the default app's webhooks are POSTed to (repeatable), Pusher's signed format."""
        self["webhook-url"].append(_webhookURL(url))

    def opt_app_secret(self, value: str) -> None:
        """Refused: the secret never goes on the command line (see --app-secret-file)."""
        raise usage.UsageError(
            "there is no --app-secret: a secret on the command line is visible to every user; "
            "put it in a file for --app-secret-file, or in PUSHSVC_APP_SECRET"
        )

    def opt_session_key(self, value: str) -> None:
        """Refused: the key never goes on the command line (see --session-key-file)."""
        raise usage.UsageError(
            "there is no --session-key: a key on the command line is visible to every user; "
            "put it in a file for --session-key-file, or in PUSHSVC_SESSION_KEY"
        )

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"pushsvc {__version__}")  # noqa: T201 -- command-line output, before logging
        sys.exit(0)

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        dataDir = Path(self["data-dir"])
        if dataDir.exists() and not dataDir.is_dir():
            raise usage.UsageError(f"--data-dir {dataDir} exists and is not a directory.")
        if self["apps-file"] is not None:
            given = [o for o in ("app-id", "app-key", "app-secret-file") if self[o] is not None]
            if given:
                raise usage.UsageError(
                    f"--{given[0]} and --apps-file do not go together: the apps file holds "
                    "every app's credentials."
                )
        if (self["app-id"] is None) != (self["app-key"] is None):
            raise usage.UsageError("--app-id and --app-key go together: give both or neither.")
        origins = tuple(
            o.strip().rstrip("/") for o in self["allowed-origins"].split(",") if o.strip()
        )
        for origin in origins:
            if not (origin.startswith("http://") or origin.startswith("https://")):
                raise usage.UsageError(
                    f"--allowed-origins: {origin!r} must start with http:// or https://."
                )
        self["allowed-origins"] = origins


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    config = ServiceConfig(
        listen=tuple(options["listen"]),
        dataDir=Path(options["data-dir"]),
        storeURL=options["store"],
        redis=options["redis"],
        appId=options["app-id"],
        appKey=options["app-key"],
        appSecretFile=options["app-secret-file"],
        sessionKeyFile=options["session-key-file"],
        environ=dict(os.environ),
        maxDataBytes=options["max-data-bytes"],
        maxOutboundBytes=options["max-outbound-bytes"],
        activityTimeout=options["activity-timeout"],
        allowedOrigins=options["allowed-origins"],
        logPublishes=bool(options["log-publishes"]),
        chatMessagesPerMinute=options["chat-messages-per-minute"],
        maxConnections=options["max-connections"],
        maxConnectionsPerIp=options["max-connections-per-ip"],
        trustedProxies=tuple(options["trusted-proxies"]),
        headerTimeout=options["header-timeout"],
        bodyMinRate=options["body-min-rate"],
        idleTimeout=options["idle-timeout"],
        logWebSockets=not options["quiet-websockets"],
        webhookUrls=tuple(options["webhook-url"]),
        webhookDebounce=options["webhook-debounce"],
        subscriptionCount=bool(options["subscription-count"]),
        appsFile=options["apps-file"],
        adminListen=(
            None
            if options["admin-listen"] == "none"
            else options["admin-listen"] or DEFAULT_ADMIN_LISTEN
        ),
        adminListenGiven=options["admin-listen"] is not None,
        adminTokenFile=options["admin-token-file"],
        recording=not options["no-recording"],
        recordedRequests=options["recorded-requests"],
        gcFreeze=options["gc-freeze"],
    )
    twistd = getattr(options, "parent", None)  # twistd's own options, when run by twistd
    if twistd is not None and not (twistd.get("nodaemon") or twistd.get("debug")):
        problem = preflight(reactor, config.listen, config.dataDir, config.storeURL)
        if problem is not None:
            raise SystemExit(f"pushsvc: {problem}")  # one line on stderr, status 1
    service = PushService(config, reactor)
    if options["log-format"] == "json":
        service.logObserver = _JSONLog(twistd)
    return service
