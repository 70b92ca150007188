"""
The benchmark's own arithmetic: the latency quantiles its subscriber program (bench/wsload.c)
reports are those of the samples sorted; the abuse script (bench/abuse.py) signs as the server
checks and prints a table that stays a table.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import requireService
from tests.test_apiauth import BODY, KEY, PATH, SECRET, TIMESTAMP

BENCH = Path(__file__).resolve().parent.parent / "bench"
WSLOAD = BENCH / "wsload.c"


def loadAbuse() -> Any:
    """bench/abuse.py as a module (bench/ is not a package), imported once."""
    if "abuse" in sys.modules:
        return sys.modules["abuse"]
    spec = importlib.util.spec_from_file_location("abuse", BENCH / "abuse.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["abuse"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class WsloadQuantileTests(SynchronousTestCase):
    def test_quantilesAreThoseOfTheSortedSamples(self) -> None:
        """
        wsload's p50, p99 and max equal sorted[int(q * n)] (and the largest sample) for
        distinct, repeated and ascending samples (its selftest); a p99 read after the median
        was selected over a range that held it was once reported instead.
        """
        cc = shlex.split(os.environ.get("CC") or "cc")
        if shutil.which(cc[0]) is None:
            requireService("A C compiler", f"({cc[0]!r}, or $CC) is missing: it builds wsload")
        with tempfile.TemporaryDirectory() as tmp:
            binary = Path(tmp) / "wsload"
            built = subprocess.run(
                [*cc, "-O2", "-o", str(binary), str(WSLOAD)],
                capture_output=True,
                text=True,
                timeout=120,
            )
            self.assertEqual(built.returncode, 0, built.stderr)
            ran = subprocess.run(
                [str(binary), "selftest"], capture_output=True, text=True, timeout=60
            )
        self.assertEqual((ran.returncode, ran.stdout.strip()), (0, "selftest ok"))


class AbuseScriptTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.abuse = loadAbuse()

    def test_apiSignatureIsTheDocVector(self) -> None:
        """The script's HTTP API signature of the doc's vector is the doc's signature."""
        params = {
            "auth_key": KEY,
            "auth_timestamp": str(TIMESTAMP),
            "auth_version": "1.0",
            "body_md5": "ec365a775a4cd0599faeb73354201b6f",
        }
        self.assertEqual(
            self.abuse.apiSignature(SECRET, "POST", PATH, params),
            "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c",
        )
        self.assertEqual(
            self.abuse.signedParams("POST", PATH, BODY, TIMESTAMP)["body_md5"], params["body_md5"]
        )

    def test_notifySignatureBindsTheChannel(self) -> None:
        """
        The /notify signature of issue 11 is hex HMAC-SHA256(secret, ts + "." + channel + "."
        + body) (the vector from openssl dgst -sha256 -hmac), and another channel changes it.
        """
        body = b'{"event":"updated"}'
        self.assertEqual(
            self.abuse.notifySignature(SECRET, "1700000000", "public-orders", body),
            "cbc17a4162895f1023bfec2701dd2301613e40b42b258996d311d3c163bc1bcf",
        )
        self.assertNotEqual(
            self.abuse.notifySignature(SECRET, "1700000000", "private-admin", body),
            self.abuse.notifySignature(SECRET, "1700000000", "public-orders", body),
        )

    def test_tableEscapesCells(self) -> None:
        """A result holding | or a newline stays one cell of one markdown row."""
        rows = [self.abuse.Row("p", "a|b\nc", "x", True), self.abuse.Row("q", "r", "y", False)]
        self.assertEqual(
            self.abuse.table(rows).splitlines()[2:],
            ["| p | a\\|b c | x | yes |", "| q | r | y | no |"],
        )
