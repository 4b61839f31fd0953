"""Writing a batch of view rows through aiosqlite.

Every statement is a hop to SQLite's thread and back, and a wake-up of the event loop
when it answers; a flush usually has nothing for most tables, so an empty batch sends
no statement at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import aiosqlite

__all__ = ["write_rows"]


async def write_rows(db: aiosqlite.Connection, sql: str, rows: Iterable[Sequence[Any]]) -> None:
    """``executemany(sql, rows)``, or nothing when there are no rows."""
    batch = list(rows)
    if batch:
        await db.executemany(sql, batch)
