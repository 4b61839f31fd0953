"""Writing a batch of view rows through aiosqlite.

Every statement is a hop to SQLite's thread and back, and a wake-up of the event loop
when it answers; a flush usually has nothing for most tables, so an empty batch sends
no statement at all.

A large batch (a rebuild's) goes in as multi-row ``INSERT OR REPLACE ... VALUES (...),
(...), ...`` statements of ``CHUNK`` rows, not through ``executemany``. ``executemany``
takes the GIL back to bind every row, and while the event loop's thread is busy folding,
each of those waits for it to let go: a write handed to SQLite's thread "behind" the fold
crawled at about 1 ms a row. One statement binds its rows at once and steps them without
the GIL, so the write runs on the other core while the fold goes on (docs/performance.md,
"Replay").

All those statements have the same size, so the same SQL text, and SQLite's statement
cache holds one per table: the last chunk is filled up by repeating its last row, which
``OR REPLACE`` writes again to the same effect. (A first version sent each batch as one
statement of its own size, and the cache kept up to 128 of them: hundreds of MB.) A
smaller batch, as most live flushes are, goes through ``executemany``: the live projector
waits for its writes, so nothing folds beside them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

import aiosqlite

__all__ = ["write_rows"]

CHUNK = 512
"""Rows per multi-row statement; batches with fewer rows use ``executemany``."""
MAX_VARIABLES = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
"""SQLite's default limit on the parameters of one statement (999 before 3.32)."""


async def write_rows(db: aiosqlite.Connection, sql: str, rows: Iterable[Sequence[Any]]) -> None:
    """``sql`` (an ``INSERT OR REPLACE ... VALUES (?, ...)`` of one row) for every row, in
    log order (a later row of the same key wins); nothing when there are no rows."""
    batch = list(rows)
    if not batch:
        return
    width = len(batch[0])
    size = min(CHUNK, MAX_VARIABLES // width)
    if len(batch) < size:
        await db.executemany(sql, batch)
        return
    group = "(" + ", ".join("?" * width) + ")"
    assert sql.startswith("INSERT OR REPLACE"), sql  # a repeated row must replace itself
    assert sql.endswith(group), sql
    statement = sql + (", " + group) * (size - 1)
    for start in range(0, len(batch), size):
        part = batch[start : start + size]
        part += [part[-1]] * (size - len(part))
        await db.execute(statement, [value for row in part for value in row])
