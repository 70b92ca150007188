"""Command-line options of C{twistd pushsvc}."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from pushsvc.service import PushService
from pushsvc.tap import DEFAULT_LISTEN, Options, makeService


class OptionsTests(SynchronousTestCase):
    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(list(args))
        return options

    def test_defaults(self) -> None:
        """With no options: loopback port 8080, ./pushsvc-data, SQLite (store None), no origins."""
        options = self.parse()
        self.assertEqual(options["listen"], [DEFAULT_LISTEN])
        self.assertEqual(options["data-dir"], "pushsvc-data")
        self.assertIsNone(options["store"])
        self.assertEqual(options["allowed-origins"], ())
        self.assertEqual(options["max-data-bytes"], 10240)

    def test_logPublishes(self) -> None:
        """--log-publishes reaches the service's config; without it, publishes are not logged."""
        self.assertFalse(makeService(self.parse()).config.logPublishes)  # type: ignore[attr-defined]  # makeService returns an IService; ours has it
        service = makeService(self.parse("--log-publishes"))
        self.assertTrue(service.config.logPublishes)  # type: ignore[attr-defined]  # makeService returns an IService; ours has it

    def test_gcFreeze(self) -> None:
        """--gc-freeze: survivors by default, startup or off, anything else a usage error."""
        self.assertEqual(makeService(self.parse()).config.gcFreeze, "survivors")  # type: ignore[attr-defined]  # makeService returns an IService; ours has it
        service = makeService(self.parse("--gc-freeze", "off"))
        self.assertEqual(service.config.gcFreeze, "off")  # type: ignore[attr-defined]  # makeService returns an IService; ours has it
        e = self.assertRaises(SystemExit, self.parse, "--gc-freeze", "always")
        self.assertIn("--gc-freeze must be one of survivors, startup, off", str(e))

    def test_listenRepeatable(self) -> None:
        """--listen may be given several times; every endpoint is kept in order."""
        options = self.parse("--listen", "tcp:1234", "--listen", "unix:/tmp/pushsvc.sock")
        self.assertEqual(options["listen"], ["tcp:1234", "unix:/tmp/pushsvc.sock"])

    def test_listenNonsense(self) -> None:
        """An endpoint string that does not parse is a usage error naming it."""
        e = self.assertRaises(SystemExit, self.parse, "--listen", "nonsense")
        self.assertIn("'nonsense'", str(e))

    def test_store(self) -> None:
        """Store URLs are checked when parsed."""
        self.assertEqual(self.parse("--store", "memory:")["store"], "memory:")
        self.assertRaises(SystemExit, self.parse, "--store", "mysql://x")

    def test_redis(self) -> None:
        """--redis takes a redis:// URL or a client endpoint; anything else is a usage error
        that says what is expected. Without it there is no Redis (None)."""
        self.assertIsNone(self.parse()["redis"])
        for good in ("redis://127.0.0.1:6379/0", "tcp:127.0.0.1:6390", "rediss://h:6380"):
            self.assertEqual(self.parse("--redis", good)["redis"], good)
        e = self.assertRaises(SystemExit, self.parse, "--redis", "localhost")
        self.assertIn("redis:// URL", str(e))
        e = self.assertRaises(SystemExit, self.parse, "--redis", "redis://u:pw@h:port")
        self.assertNotIn("pw", str(e).replace("twistd pushsvc", ""))

    def test_redisPasswordRedacted(self) -> None:
        """A --redis URL that parses but is no usable endpoint is refused with the password
        shown as ***."""
        e = self.assertRaises(SystemExit, self.parse, "--redis", "redis://bob:hunter2@a=b:6379")
        self.assertNotIn("hunter2", str(e))
        self.assertIn("redis://bob:***@a=b:6379", str(e))

    def test_numbers(self) -> None:
        """Numeric options must be positive whole numbers."""
        self.assertEqual(self.parse("--max-data-bytes", "20000")["max-data-bytes"], 20000)
        self.assertRaises(SystemExit, self.parse, "--max-data-bytes", "lots")
        self.assertRaises(SystemExit, self.parse, "--activity-timeout", "0")

    def test_appIdNeedsKey(self) -> None:
        """--app-id without --app-key (or the reverse) is refused."""
        self.assertRaises(SystemExit, self.parse, "--app-id", "1")
        self.assertRaises(SystemExit, self.parse, "--app-key", "k")
        options = self.parse("--app-id", "1", "--app-key", "k")
        self.assertEqual((options["app-id"], options["app-key"]), ("1", "k"))

    def test_secretFileMustExist(self) -> None:
        self.assertRaises(SystemExit, self.parse, "--app-secret-file", "/nonexistent/x")

    def test_noSecretOnCommandLine(self) -> None:
        """There is no option that takes the secret itself."""
        self.assertRaises(SystemExit, self.parse, "--app-secret", "s3cret")

    def test_origins(self) -> None:
        options = self.parse("--allowed-origins", "https://a.example, http://b.example:8080/")
        self.assertEqual(options["allowed-origins"], ("https://a.example", "http://b.example:8080"))
        self.assertRaises(SystemExit, self.parse, "--allowed-origins", "a.example")

    def test_makeServiceNoIO(self) -> None:
        """makeService builds the service without creating the data directory."""
        dataDir = Path(self.mktemp())
        service = makeService(self.parse("--data-dir", str(dataDir)))
        self.assertIsInstance(service, PushService)
        self.assertFalse(dataDir.exists())

    def test_chatMessagesPerMinute(self) -> None:
        """--chat-messages-per-minute: 60 by default, a positive whole number, in the config."""
        self.assertEqual(self.parse()["chat-messages-per-minute"], 60)
        options = self.parse("--chat-messages-per-minute", "6", "--data-dir", self.mktemp())
        self.assertEqual(options["chat-messages-per-minute"], 6)
        service = makeService(options)
        assert isinstance(service, PushService)
        self.assertEqual(service.config.chatMessagesPerMinute, 6)
        for bad in ("0", "-1", "many"):
            error = self.assertRaises(SystemExit, self.parse, "--chat-messages-per-minute", bad)
            self.assertIn("--chat-messages-per-minute", str(error))


class HTTPDeadlineOptionsTests(SynchronousTestCase):
    """--header-timeout, --body-min-rate and --idle-timeout reach the service's config."""

    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(list(args))
        return options

    def test_defaults(self) -> None:
        config = makeService(self.parse()).config  # type: ignore[attr-defined]  # makeService returns an IService; ours has it
        self.assertEqual(
            (config.headerTimeout, config.bodyMinRate, config.idleTimeout), (10.0, 1024, 60.0)
        )

    def test_given(self) -> None:
        options = self.parse(
            "--header-timeout", "2.5", "--body-min-rate", "4096", "--idle-timeout", "30"
        )
        config = makeService(options).config  # type: ignore[attr-defined]  # makeService returns an IService; ours has it
        self.assertEqual(
            (config.headerTimeout, config.bodyMinRate, config.idleTimeout), (2.5, 4096, 30.0)
        )

    def test_refused(self) -> None:
        """Zero, negative, infinite or non-numbers are refused with a one-line message."""
        for option, value in [
            ("--header-timeout", "0"),
            ("--header-timeout", "soon"),
            ("--idle-timeout", "-1"),
            ("--idle-timeout", "inf"),
            ("--body-min-rate", "0"),
            ("--body-min-rate", "1.5"),
        ]:
            e = self.assertRaises(SystemExit, self.parse, option, value)
            self.assertIn(option, str(e))
            self.assertNotIn("\n", str(e))
