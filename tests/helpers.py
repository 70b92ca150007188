"""Small helpers shared by the test modules."""

from __future__ import annotations

import os
from typing import NoReturn

from twisted.trial.unittest import FailTest, SkipTest


def inCI() -> bool:
    """True when the environment says this is a CI run (C{CI=true}, as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def requireService(name: str, reason: str) -> NoReturn:
    """
    A service the test needs (C{name}, e.g. "PostgreSQL") is missing because of C{reason}: skip
    the test on a developer's machine, but fail it in CI, where a skip would hide a broken set-up.
    """
    message = f"{name} {reason}"
    if inCI():
        raise FailTest(f"{message} (CI=true, so this fails instead of skipping)")
    raise SkipTest(message)
