"""Writing a batch of view rows through aiosqlite.

Every statement is a hop to SQLite's thread and back, and a wake-up of the event loop
when it answers; a flush usually has nothing for most tables, so an empty batch sends
no statement at all.

Rows go in as multi-row ``INSERT ... VALUES (...), (...), ...`` statements, thousands of
rows each, not through ``executemany``. ``executemany`` takes the GIL back to bind every
row, and while the event loop's thread is busy folding (a rebuild) each of those waits
for it to let go: a write handed to SQLite's thread "behind" the fold crawled at about
1 ms a row. One statement binds all its rows at once and steps them without the GIL, so
the write runs on the other core while the fold goes on (docs/performance.md, "Replay").
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

import aiosqlite

__all__ = ["write_rows"]

MAX_VARIABLES = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
"""SQLite's default limit on the parameters of one statement (999 before 3.32)."""


async def write_rows(db: aiosqlite.Connection, sql: str, rows: Iterable[Sequence[Any]]) -> None:
    """``sql`` (an ``INSERT ... VALUES (?, ...)`` of one row) for every row, in as few
    statements as SQLite's parameter limit allows; nothing when there are no rows."""
    batch = list(rows)
    if not batch:
        return
    width = len(batch[0])
    group = "(" + ", ".join("?" * width) + ")"
    assert sql.endswith(group), f"write_rows needs an INSERT of one row: {sql!r}"
    per_statement = max(1, MAX_VARIABLES // width)
    for start in range(0, len(batch), per_statement):
        part = batch[start : start + per_statement]
        statement = sql + (", " + group) * (len(part) - 1)
        await db.execute(statement, [value for row in part for value in row])
