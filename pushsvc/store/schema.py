"""
Versioned schema scripts, shared by the SQL engines.

Each engine keeps a directory of C{NNN-what.sql} files (C{sql/sqlite}, C{sql/postgresql}),
numbered 1, 2, 3... The database's C{version} table holds the number of the last script applied;
opening a store applies every newer script, in order, inside one transaction, then records the
newest number. Adding C{002-something.sql} is all an upgrade takes. Pure code: no database here.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable


class SchemaError(Exception):
    """The schema scripts or the database's schema version make no sense together."""


@dataclass(frozen=True)
class Script:
    version: int
    name: str
    sql: str


def defaultSchema(engine: str) -> Traversable:
    """The packaged script directory of C{engine} (C{"sqlite"} or C{"postgresql"})."""
    return files("pushsvc.store") / "sql" / engine


def loadScripts(directory: Traversable) -> list[Script]:
    """
    Read the C{.sql} files of C{directory}, sorted by version. Raises L{SchemaError} unless the
    versions run 1, 2, 3... without gaps or duplicates.
    """
    scripts = []
    for entry in directory.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        prefix = entry.name.split("-", 1)[0]
        if not prefix.isdigit():
            raise SchemaError(f"schema script {entry.name} does not start with a version number")
        scripts.append(Script(int(prefix), entry.name, entry.read_text(encoding="utf-8")))
    scripts.sort(key=lambda s: s.version)
    versions = [s.version for s in scripts]
    if versions != list(range(1, len(scripts) + 1)):
        raise SchemaError(f"schema scripts in {directory} must be numbered 1, 2, 3...: {versions}")
    return scripts


def pendingScripts(scripts: list[Script], current: int) -> list[Script]:
    """
    The scripts to apply to a database at version C{current} (0: empty). Raises L{SchemaError}
    when the database is newer than the newest script, i.e. written by a newer pushsvc.
    """
    newest = scripts[-1].version if scripts else 0
    if current > newest:
        raise SchemaError(
            f"the database schema is at version {current} but this pushsvc only knows up to "
            f"version {newest}; run a newer pushsvc"
        )
    return [s for s in scripts if s.version > current]
