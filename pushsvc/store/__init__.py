"""
The chat message store: L{IStore} and the engines behind it, chosen by a URL.

    memory:                      MemoryStore, for tests; nothing is kept
    sqlite:PATH                  SQLiteStore; PATH relative to the data directory
    sqlite:  (or no URL)         SQLiteStore at DATA_DIR/pushsvc.sqlite3
    postgresql://USER@HOST/DB    PostgreSQLStore (also postgres://), shared by several processes
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pushsvc.store.interface import IStore, Message, PendingWebhook, RoomSummary, StoreUnavailable

__all__ = [
    "IStore",
    "Message",
    "PendingWebhook",
    "RoomSummary",
    "StoreUnavailable",
    "storeFromURL",
    "validateStoreURL",
]

DEFAULT_SQLITE_FILE = "pushsvc.sqlite3"
_USAGE = "use sqlite:PATH, postgresql://USER@HOST/DATABASE or memory:"


def _kind(url: str) -> str:
    scheme, colon, _ = url.partition(":")
    scheme = scheme.lower()
    if colon and scheme in ("memory", "sqlite"):
        return scheme
    if colon and scheme in ("postgresql", "postgres"):
        if not url[len(scheme) :].startswith("://"):
            raise ValueError(
                "A PostgreSQL store URL starts with postgresql://, e.g. "
                "postgresql://pushsvc@db.example/pushsvc."
            )
        return "postgresql"
    # Name only the scheme: the rest of a mistyped URL may hold a password.
    shown = f"'{scheme}:'" if colon else "no URL scheme"
    raise ValueError(f"Unknown message store type ({shown}); {_USAGE}.")


def validateStoreURL(url: str) -> str:
    """
    Check a C{--store} value without any I/O. Returns it unchanged.

    @raise ValueError: with a sentence for the user, never containing a password.
    """
    kind = _kind(url)
    if kind == "memory" and url.partition(":")[2]:
        raise ValueError("The memory store takes no path: use memory: on its own.")
    if kind == "postgresql":
        from pushsvc.store.postgresql import parseConninfo

        parseConninfo(url)
    return url


def storeFromURL(url: str | None, dataDir: Path, reactor: Any) -> IStore:
    """
    Build (not open) the store C{url} names; C{None} means SQLite in C{dataDir}. No I/O.

    @raise ValueError: C{url} names no store we know, with a sentence for the user.
    """
    if url is None:
        url = "sqlite:"
    kind = _kind(validateStoreURL(url))
    if kind == "memory":
        from pushsvc.store.memory import MemoryStore

        return MemoryStore()
    if kind == "sqlite":
        from pushsvc.store.sqlite import SQLiteStore

        path = Path(url.partition(":")[2] or DEFAULT_SQLITE_FILE).expanduser()
        return SQLiteStore((dataDir / path).absolute(), reactor)
    from pushsvc.store.postgresql import PostgreSQLStore

    return PostgreSQLStore(url, reactor)
