"""The pytest markers are applied (tests/conftest.py), so C{-m} selects what it says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent


def collected(marker: str, *paths: str) -> set[str]:
    """The test ids C{pytest --collect-only -m marker paths} selects, run in the checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q"]
        + ["-m", marker, *paths],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return {line for line in out.splitlines() if "::" in line}


class MarkerTests(SynchronousTestCase):
    def test_selection(self) -> None:
        """
        C{-m browser} picks the browser tests and nothing in-process; C{-m "not slow"} leaves
        out the tests that start processes and keeps the unit tests; C{-m redis} and
        C{-m postgres} pick the tests that need those servers and leave their address parsing.
        """
        paths = ("tests/test_browser.py", "tests/test_frames.py", "tests/test_redis.py")
        browser = collected("browser", *paths)
        self.assertTrue(browser)
        self.assertTrue(all(t.startswith("tests/test_browser.py::") for t in browser), browser)
        fast = collected("not slow", *paths)
        self.assertTrue(any(t.startswith("tests/test_frames.py::") for t in fast), fast)
        self.assertFalse(any(t.startswith("tests/test_browser.py::") for t in fast), fast)
        redis = collected("redis", *paths)
        self.assertTrue(any("::BrokerTests::" in t for t in redis), redis)
        self.assertFalse(any("::AddressTests::" in t for t in redis), redis)
        postgres = collected("postgres", "tests/test_store.py")
        self.assertTrue(any("::PostgreSQLStoreTests::" in t for t in postgres), postgres)
        self.assertFalse(any("::SQLiteStoreTests::" in t for t in postgres), postgres)
