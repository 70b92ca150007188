"""
The pytest markers declared in pyproject.toml, applied in one place, so that for example
C{pytest -m "not slow"} runs only the in-process tiers and C{pytest -m "not browser"} needs no
Chromium. A test gets a marker when its module, or a class in its test case's ancestry, is
listed below; name new modules and base classes here when they need a service.
"""

from __future__ import annotations

from pathlib import Path

import pytest

INTEGRATION = Path(__file__).parent / "integration"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """
    tests/integration (pytest-twisted tests: the reactor runs in a greenlet for the whole
    session, which trial's test cases cannot share) is collected only in a run that names it,
    e.g. C{pytest tests/integration}; scripts/test.sh runs it after the trial tiers.
    """
    if collection_path != INTEGRATION:
        return None
    named = [Path(arg.split("::")[0]).resolve() for arg in config.args]
    return not any(p == INTEGRATION or INTEGRATION in p.parents for p in named)


# marker -> (modules whose every test has it, test case base classes whose tests have it)
MARKS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "browser": (
        frozenset(
            {
                "test_browser",
                "test_browser_pusherjs",
                "test_browser_chat",
                "test_inside_browser",
                "test_nginx",
            }
        ),
        frozenset({"tests.test_cluster.BrowserTests"}),
    ),
    "redis": (
        frozenset({"test_cluster"}),
        frozenset({"tests.redisutil.RedisTestCase"}),
    ),
    "postgres": (
        frozenset({"test_cluster"}),
        frozenset({"tests.test_store.PostgreSQLSchemaMixin"}),
    ),
    # Starts real processes: twistd children, a browser, redis-server, node, pip, a C compiler.
    "slow": (
        frozenset(
            {
                "test_browser",
                "test_browser_pusherjs",
                "test_cluster",
                "test_twistd",
                "test_packaging",
                "test_pusherjs",
                "test_bench",
                "test_markers",
                "test_browser_chat",
                "test_inside_browser",
                "test_nginx",
                "test_apps_live",
                "test_inside",
                "test_limits_live",
                "test_webhooks",
            }
        ),
        frozenset({"tests.test_redis.OutageTests"}),
    ),
}


def _ancestry(item: pytest.Item) -> set[str]:
    cls = getattr(item, "cls", None)
    if cls is None:
        return set()
    return {f"{c.__module__}.{c.__qualname__}" for c in cls.__mro__}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        owner = getattr(item, "module", None)
        module = owner.__name__.rsplit(".", 1)[-1] if owner is not None else ""
        ancestry = _ancestry(item)
        for marker, (modules, bases) in MARKS.items():
            if module in modules or ancestry & bases:
                item.add_marker(getattr(pytest.mark, marker))
