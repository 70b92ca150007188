"""
History paging in a big room (issue 16): how long a 50-message page takes at the start and at the
end of a room of 1,000,000 messages, on SQLite and on PostgreSQL.

    python bench/history.py                     # 1,000,000 messages, both engines
    python bench/history.py --messages 200000 --engines sqlite

It runs the store's own queries (L{pushsvc.store.queries}: the first page is C{latest}, older
pages C{before}) against a schema built from the packaged C{.sql} scripts, so it measures the
index the server uses. SQLite: a file in a temporary directory, removed afterwards. PostgreSQL
($PUSHSVC_TEST_POSTGRESQL, default postgresql://postgres@127.0.0.1:5432/test): a schema of its
own, pushsvc_bench_<random>, dropped afterwards (also on Ctrl-C). Rows go in by bulk insert
(executemany in one transaction / COPY); the count is capped at 5,000,000. Each page is timed
over 30 runs after 3 warm-ups; the median and the slowest are printed in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pushsvc.store import queries  # noqa: E402
from pushsvc.store.schema import defaultSchema, loadScripts  # noqa: E402
from pushsvc.store.sqlite import DIALECT as SQLITE  # noqa: E402
from pushsvc.store.sqlite import _statements  # noqa: E402

PG_URL = os.environ.get("PUSHSVC_TEST_POSTGRESQL", "postgresql://postgres@127.0.0.1:5432/test")
ROOM = "big-room"
PAGE = 50
MAX_MESSAGES = 5_000_000
RUNS = 30


def rows(count: int) -> Iterator[tuple[Any, ...]]:
    for i in range(1, count + 1):
        yield (ROOM, i, f"user{i % 97}", f"message number {i}", 1.7e9 + i, f"u{i % 97:015d}")


def timePages(cursor: Any, dialect: queries.Dialect, count: int) -> dict[str, tuple[float, float]]:
    """Median and slowest milliseconds of the first page (newest 50) and the last (ids 1-50)."""
    pages: dict[str, Callable[[], list[Any]]] = {
        "end (newest 50, ?limit=50)": lambda: queries.latest(cursor, dialect, ROOM, PAGE),
        "start (ids 1-50, ?before=51)": lambda: queries.before(cursor, dialect, ROOM, 51, PAGE),
        "middle (?before=N/2)": lambda: queries.before(cursor, dialect, ROOM, count // 2, PAGE),
    }
    results = {}
    for name, page in pages.items():
        for _ in range(3):
            page()
        samples = []
        for _ in range(RUNS):
            started = time.perf_counter()
            got = page()
            samples.append((time.perf_counter() - started) * 1000)
        assert len(got) == PAGE, (name, len(got))
        results[name] = (statistics.median(samples), max(samples))
    # The plan of an older page: a range scan of the primary key, not a scan of the room.
    explain = "EXPLAIN QUERY PLAN " if dialect.placeholder == "?" else "EXPLAIN "
    cursor.execute(
        dialect.sql(
            explain + "SELECT id FROM messages WHERE room = ? AND id < ? ORDER BY id DESC LIMIT ?"
        ),
        (ROOM, 51, PAGE),
    )
    print("  plan:", " / ".join(str(row[-1]).strip() for row in cursor.fetchall()))
    return results


def sqliteRun(count: int) -> dict[str, tuple[float, float]]:
    with tempfile.TemporaryDirectory(prefix="pushsvc-history-") as directory:
        db = sqlite3.connect(Path(directory) / "bench.sqlite3", isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("BEGIN")
            for script in loadScripts(defaultSchema("sqlite")):
                for statement in _statements(script.sql):
                    db.execute(statement)
            db.execute("INSERT INTO rooms VALUES (?, ?, ?)", (ROOM, count, 1.7e9 + count))
            started = time.perf_counter()
            db.executemany(
                "INSERT INTO messages (room, id, author, text, created_at, user_id)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows(count),
            )
            db.execute("COMMIT")
            db.execute("ANALYZE")
            print(f"  sqlite: {count:,} messages inserted in {time.perf_counter() - started:.1f} s")
            return timePages(db.cursor(), SQLITE, count)
        finally:
            db.close()


def postgresqlRun(count: int) -> dict[str, tuple[float, float]]:
    import psycopg
    from psycopg.conninfo import make_conninfo

    from pushsvc.store.postgresql import DIALECT as PG

    schema = f"pushsvc_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            conninfo = make_conninfo(PG_URL, options=f"-c search_path={schema}")
            with psycopg.connect(conninfo, autocommit=True) as db:
                with db.transaction():
                    for script in loadScripts(defaultSchema("postgresql")):
                        db.execute(script.sql)
                    db.execute(
                        "INSERT INTO rooms VALUES (%s, %s, %s)", (ROOM, count, 1.7e9 + count)
                    )
                    started = time.perf_counter()
                    with db.cursor().copy(
                        "COPY messages (room, id, author, text, created_at, user_id) FROM STDIN"
                    ) as copy:
                        for row in rows(count):
                            copy.write_row(row)
                db.execute("ANALYZE messages")
                took = time.perf_counter() - started
                print(f"  postgresql: {count:,} messages inserted in {took:.1f} s")
                return timePages(db.cursor(), PG, count)
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--engines", default="sqlite,postgresql")
    args = parser.parse_args(argv)
    if not 1000 <= args.messages <= MAX_MESSAGES:
        parser.error(f"--messages must be between 1000 and {MAX_MESSAGES:,}")
    runners = {"sqlite": sqliteRun, "postgresql": postgresqlRun}
    table = []
    for engine in args.engines.split(","):
        if engine not in runners:
            parser.error(f"unknown engine {engine!r}: use sqlite and/or postgresql")
        for page, (median, slowest) in runners[engine](args.messages).items():
            table.append(
                f"| {engine} | {args.messages:,} | {page} | {median:.3f} | {slowest:.3f} |"
            )
    print("\n| engine | messages | page of 50 | median ms | slowest ms |")
    print("|---|---|---|---|---|")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
