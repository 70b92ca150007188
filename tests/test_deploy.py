"""The deployment files in C{docs/}: the systemd unit verifies and its options are pushsvc's."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from pushsvc.tap import Options
from tests.helpers import requireService

DOCS = Path(__file__).resolve().parent.parent / "docs"
UNIT = DOCS / "pushsvc.service"
SYSTEMD = ("/lib/systemd/systemd", "/usr/lib/systemd/systemd")


def execStart() -> list[str]:
    """The unit's ExecStart, its continuation lines joined, split into words."""
    text = UNIT.read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    return shlex.split(line.partition("=")[2])


class SystemdUnitTests(SynchronousTestCase):
    def test_verify(self) -> None:
        """
        C{systemd-analyze verify} finds nothing to say about docs/pushsvc.service (with its
        twistd path pointed at this environment's). Skips where the machine has no systemd at
        all; where systemd is there but systemd-analyze is not, CI=true fails.
        """
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            if not any(os.path.exists(p) for p in SYSTEMD):
                raise SkipTest("no systemd on this machine: systemd-analyze verify cannot run")
            requireService("systemd-analyze", "is not installed (apt-get install systemd)")
        twistd = Path(sys.executable).parent / "twistd"
        if not twistd.exists():
            twistd = Path(shutil.which("twistd") or "/bin/true")
        unit = Path(self.mktemp()).resolve() / "pushsvc.service"
        unit.parent.mkdir(parents=True)
        text, n = re.subn(
            r"ExecStart=/opt/pushsvc/bin/twistd ", f"ExecStart={twistd} ", UNIT.read_text()
        )
        self.assertEqual(n, 1)
        unit.write_text(text)
        result = subprocess.run(
            [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
        )
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))

    def test_unitDirectives(self) -> None:
        """The unit runs twistd in the foreground as its own user, restarts on failure, raises
        the fd limit and hands the secrets over as credentials."""
        text = UNIT.read_text()
        for directive in (
            "User=pushsvc",
            "Restart=on-failure",
            "LimitNOFILE=65536",
            "LoadCredential=app-secret:",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "StateDirectory=pushsvc",
        ):
            self.assertIn(f"\n{directive}", text)
        words = execStart()
        self.assertIn("-n", words[: words.index("pushsvc")])

    def test_unitOptionsParse(self) -> None:
        """The pushsvc options in the unit's ExecStart are real options that parse."""
        words = execStart()
        credentials = Path(self.mktemp()).resolve()
        credentials.mkdir()
        for name in ("app-secret", "session-key"):
            (credentials / name).write_text("x" * 32)
        args = [
            w.replace("%d", str(credentials))
            for w in words[words.index("pushsvc") + 1 :]
            if w != "$PUSHSVC_OPTIONS"
        ]
        options = Options()
        options.parseOptions(args)
        self.assertEqual(options["data-dir"], "/var/lib/pushsvc")
        self.assertEqual(options["app-secret-file"], credentials / "app-secret")
