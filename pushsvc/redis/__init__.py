"""
Redis: address parsing (L{address}, no txredisapi), the reconnecting link (L{link}), the broker
(L{broker}) and the cluster state (L{state}); their Lua scripts are package data in C{lua/}, like
the store's C{.sql} files. Importing this package does not import txredisapi (which installs the
global reactor): only L{link}, L{broker} and L{state} do.
"""

from __future__ import annotations

from importlib import resources


def luaSource(name: str) -> str:
    """The text of C{lua/{name}.lua}."""
    return resources.files(__name__).joinpath("lua", f"{name}.lua").read_text("utf-8")
