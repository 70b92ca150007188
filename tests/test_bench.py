"""
The benchmark's own arithmetic: the latency quantiles its subscriber program (bench/wsload.c)
reports are those of the samples sorted.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import requireService

WSLOAD = Path(__file__).resolve().parent.parent / "bench" / "wsload.c"


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
            built = subprocess.run([*cc, "-O2", "-o", str(binary), str(WSLOAD)],
                                   capture_output=True, text=True, timeout=120)
            self.assertEqual(built.returncode, 0, built.stderr)
            ran = subprocess.run([str(binary), "selftest"], capture_output=True, text=True,
                                 timeout=60)
        self.assertEqual((ran.returncode, ran.stdout.strip()), (0, "selftest ok"))
