"""
The apps file (C{--apps-file}): what it accepts, the one-line errors for what it refuses, and
what a reload changes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pushsvc.apps import App, Apps
from pushsvc.appsfile import AppsFileError, diffApps, loadAppsFile, parseApps
from pushsvc.tap import Options, makeService

FULL = """
chat_app = "2"

[[app]]
id = "1"
key = "app1-key"
secret_file = "app1.secret"
enabled = true
max_connections = 10000
max_subscriptions_per_connection = 100
max_presence_members = 100
max_channel_name_length = 164
max_event_bytes = 10240
max_client_events_per_second = 10
max_api_requests_per_second = 0
allowed_origins = []
user_authentication_timeout = 0

[[app]]
id = "2"
key = "app2-key"
secret = "s2"
max_connections = 5
max_presence_members = 3
max_api_requests_per_second = 7
allowed_origins = ["https://chat.example/"]
user_authentication_timeout = 2.5
enabled = false
"""


class LoadTests(SynchronousTestCase):
    def write(self, text: str, mode: int = 0o600, secret: str | None = "s1\n") -> Path:
        directory = Path(self.mktemp())
        directory.mkdir()
        path = directory / "apps.toml"
        path.write_text(text)
        path.chmod(mode)
        if secret is not None:
            (directory / "app1.secret").write_text(secret)
        return path

    def error(self, text: str, **kw: object) -> str:
        path = self.write(text, **kw)  # type: ignore[arg-type]
        e = self.assertRaises(AppsFileError, loadAppsFile, path)
        message = str(e)
        self.assertNotIn("\n", message)
        self.assertTrue(message.startswith(f"{path}: "), message)
        return message

    def test_full(self) -> None:
        """Every field of the README's example is read; the chat's app is chat_app."""
        loaded = loadAppsFile(self.write(FULL))
        one, two = loaded.apps
        self.assertEqual(loaded.chatApp, "2")
        self.assertEqual((one.id, one.key, one.secret), ("1", "app1-key", "s1"))
        self.assertEqual(one.maxConnections, 10000)
        self.assertEqual(one.maxSubscriptionsPerConnection, 100)
        self.assertEqual(one.maxClientEventsPerSecond, 10)
        self.assertEqual(one.userAuthenticationTimeout, 0.0)
        self.assertEqual(two.secret, "s2")
        self.assertFalse(two.enabled)
        self.assertEqual(two.maxConnections, 5)
        self.assertEqual(two.maxPresenceMembers, 3)
        self.assertEqual(two.maxApiRequestsPerSecond, 7)
        self.assertEqual(two.allowedOrigins, ("https://chat.example",))
        self.assertEqual(two.userAuthenticationTimeout, 2.5)
        self.assertEqual(Apps(loaded.apps, loaded.chatApp).default.id, "2")

    def test_defaults(self) -> None:
        """Every field but id, key and the secret has Pusher's default; the chat takes the first."""
        loaded = loadAppsFile(
            self.write('[[app]]\nid = "1"\nkey = "k"\nsecret_file = "app1.secret"\n')
        )
        (app,) = loaded.apps
        self.assertEqual(loaded.chatApp, "1")
        self.assertEqual(
            (
                app.enabled,
                app.maxConnections,
                app.maxPresenceMembers,
                app.maxChannelNameLength,
                app.maxDataBytes,
                app.maxApiRequestsPerSecond,
                app.allowedOrigins,
                app.userAuthenticationTimeout,
            ),
            (True, 0, 100, 164, 10240, 0, (), 0.0),
        )

    def test_readmeExample(self) -> None:
        """The README's example apps file loads as it is (with its secret file put in place)."""
        readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
        section = readme[readme.index("## Apps") :]
        example = section[section.index("```toml\n") + 8 :]
        example = example[: example.index("```")]
        path = self.write(example.replace("/etc/pushsvc/app1.secret", "app1.secret"))
        loaded = loadAppsFile(path)
        self.assertEqual([a.id for a in loaded.apps], ["1", "2"])
        self.assertEqual(len(loaded.apps[0].webhooks), 1)

    def test_webhooksPerApp(self) -> None:
        """
        An app's webhooks and subscription counts come from its table (pushsvc.webhooks.format);
        a bad webhook is one line naming the file, the app and the field.
        """
        loaded = loadAppsFile(
            self.write(
                '[[app]]\nid = "1"\nkey = "k"\nsecret_file = "app1.secret"\n'
                "subscription_count = true\n"
                'webhooks = [{url = "https://hooks.example/p", events = ["member_added"]}]\n'
            )
        )
        (app,) = loaded.apps
        self.assertTrue(app.subscriptionCount)
        (target,) = app.webhooks
        self.assertEqual((target.url, target.events), ("https://hooks.example/p", {"member_added"}))
        message = self.error(
            '[[app]]\nid = "1"\nkey = "k"\nsecret_file = "app1.secret"\n'
            'webhooks = [{url = "ftp://x"}]\n'
        )
        self.assertIn("webhooks", message)
        self.assertIn("ftp://x", message)

    def test_refusals(self) -> None:
        """Each mistake is one line naming the file, the app and the field."""
        head = '[[app]]\nid = "1"\nkey = "k"\nsecret_file = "app1.secret"\n'
        cases = [
            (head + "colour = 1\n", "app '1': colour: unknown field"),
            (head + 'max_connections = "10"\n', "app '1': max_connections: must be a whole"),
            (head + "max_connections = -1\n", "app '1': max_connections:"),
            (head + "enabled = 1\n", "app '1': enabled: must be true or false"),
            (head + "max_presence_members = 0\n", "app '1': max_presence_members:"),
            (head + 'allowed_origins = ["ftp://x"]\n', "app '1': allowed_origins:"),
            (head + "user_authentication_timeout = true\n", "app '1': user_authentication_timeout"),
            (head + head, "app '1': id: another app has this id"),
            (head + head.replace('"1"', '"2"'), "app '2': key: another app has this key"),
            ('[[app]]\nkey = "k"\nsecret = "s"\n', "app #1: id: required"),
            (
                '[[app]]\nid = "1:subs"\nkey = "k"\nsecret = "s"\n',
                "app '1:subs': id: required, 1 to 64",
            ),
            ('[[app]]\nid = "1"\nkey = "a/b"\nsecret = "s"\n', "app '1': key: required, 1 to 64"),
            ('[[app]]\nid = "1"\nsecret = "s"\n', "app '1': key: required"),
            ('[[app]]\nid = "1"\nkey = "k"\n', "app '1': secret: give exactly one"),
            (head + 'secret = "s"\n', "app '1': secret: give exactly one"),
            (head.replace("app1.secret", "nope.secret"), "app '1': secret_file: cannot read"),
            (head + 'chat_app = "9"\n', "app '1': chat_app: unknown field"),
            ('chat_app = "9"\n' + head, "chat_app: '9' is not the id of an app"),
            ("apps = 1\n", "unknown top-level key 'apps'"),
            ("", "no [[app]] table"),
            ("[[app]\n", "not valid TOML"),
        ]
        for text, expected in cases:
            self.assertIn(expected, self.error(text))

    def test_secretInReadableFile(self) -> None:
        """A secret written in the apps file is refused when group or others may read it."""
        text = '[[app]]\nid = "1"\nkey = "k"\nsecret = "s"\n'
        message = self.error(text, mode=0o644)
        self.assertIn("app '1': secret: the file holds a secret but group or others", message)
        self.assertNotIn('"s"', message)
        self.assertEqual(loadAppsFile(self.write(text, mode=0o600)).apps[0].secret, "s")

    def test_emptySecretFile(self) -> None:
        """An empty secret file is refused (a secret of "" would let anyone sign)."""
        text = '[[app]]\nid = "1"\nkey = "k"\nsecret_file = "app1.secret"\n'
        self.assertIn("secret_file: cannot read", self.error(text, secret="  \n"))

    def test_unreadable(self) -> None:
        """A missing apps file is one line too."""
        path = Path(self.mktemp())
        self.assertIn(
            "cannot read the apps file", str(self.assertRaises(AppsFileError, loadAppsFile, path))
        )

    @settings(max_examples=200, deadline=None)
    @given(st.text(max_size=300))
    def test_fuzz(self, text: str) -> None:
        """Any text is either a valid set of apps or one AppsFileError line, nothing else."""
        try:
            parseApps(Path("/x/apps.toml"), text, secretInFileAllowed=True)
        except AppsFileError as e:
            self.assertNotIn("\n", str(e))


class DiffTests(SynchronousTestCase):
    def test_diff(self) -> None:
        """
        Removed apps and apps whose key changed close with 4001, newly disabled ones with 4003;
        an app whose limits or secret changed, or that did not change, keeps its connections.
        """
        a, b, c, d, e = (App(i, f"k{i}", f"s{i}") for i in "abcde")
        old = [a, b, c, d, e]
        new = [
            App("a", "ka", "sa"),  # untouched
            App("b", "kb", "sb", enabled=False),
            App("c", "kc", "rotated"),
            App("d", "new-key", "sd"),
            App("f", "kf", "sf"),
        ]
        diff = diffApps(old, new)
        self.assertEqual(diff.added, ("f",))
        self.assertEqual(diff.removed, ("e",))
        self.assertEqual(diff.disabled, ("b",))
        self.assertEqual(diff.changed, ("c", "d"))
        self.assertEqual(
            dict(diff.close),
            {
                "e": (4001, "the app was removed"),
                "b": (4003, "the app is disabled"),
                "d": (4001, "the app key was changed"),
            },
        )
        self.assertEqual(diff.summary(), "added f; removed e; disabled b; changed c, d")
        self.assertEqual(diffApps(old, old).summary(), "no change")


class AppsTests(SynchronousTestCase):
    def test_replace(self) -> None:
        """Apps.replace swaps the whole set: lookups by id and key see only the new one."""
        apps = Apps([App("1", "k1", "s")])
        apps.replace([App("2", "k2", "s"), App("3", "k3", "s")], "3")
        self.assertIsNone(apps.byId("1"))
        self.assertIsNone(apps.byKey("k1"))
        self.assertEqual(apps.byKey("k2"), App("2", "k2", "s"))
        self.assertEqual(apps.default.id, "3")
        self.assertEqual(len(apps), 2)


class OptionTests(SynchronousTestCase):
    def test_appsFileOption(self) -> None:
        """
        --apps-file reaches the service as an absolute path (read again on SIGHUP whatever the
        working directory); a missing file, or --apps-file with --app-id, is one usage line.
        """
        path = Path(self.mktemp())
        path.write_text('[[app]]\nid = "1"\nkey = "k"\nsecret_file = "s"\n')
        options = Options()
        options.parseOptions(["--apps-file", str(path)])
        service: Any = makeService(options)
        self.assertEqual(service.config.appsFile, path.resolve())
        self.assertTrue(service.config.appsFile.is_absolute())
        for args, expected in [
            (["--apps-file", str(path) + ".nope"], "is not a readable file"),
            (
                ["--apps-file", str(path), "--app-id", "1", "--app-key", "k"],
                "--app-id and --apps-file do not go together",
            ),
        ]:
            e = self.assertRaises(SystemExit, Options().parseOptions, args)
            self.assertIn(expected, str(e))
            self.assertNotIn("\n", str(e))


if os.name != "posix":  # file modes
    del LoadTests.test_secretInReadableFile
