"""One page of a list out of the view, narrowed in SQL (keyset pagination).

A page is the rows after the cursor's sort key, in the list's total order, at most
``limit`` of them: SQLite finds where the cursor's row was and reads on from there,
so a page costs the same at the millionth row as at the first, and the rows are never
all read to be cut in Python. One row more than the page is read: it says whether
another page follows, without counting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite

from sandboxer.pagination import Listing, Page

__all__ = ["Keyset", "read_page"]


@dataclass(frozen=True)
class Keyset:
    """A list's order in the view: the ``listing`` (what its cursors hold) and the SQL
    ``columns`` of its sort key, in order (ascending, nulls first: SQLite's order), the
    last one unique and never null, so the order is total."""

    listing: Listing
    columns: tuple[str, ...]

    def __post_init__(self) -> None:
        assert len(self.columns) == len(self.listing.parts), self

    def after(self, cursor: str) -> tuple[str, list[Any]]:
        """The condition (and its parameters) that keeps the rows after ``cursor``'s."""
        return _after(self.columns, self.listing.position(cursor))


def _after(columns: Sequence[str], key: Sequence[Any]) -> tuple[str, list[Any]]:
    """Rows whose ``columns`` sort after ``key``. Spelt out column by column rather than
    as a row value ``(a, b) > (?, ?)``, which is null, so false, whenever a part is null:
    a row with no ``created_at`` would be skipped by every page."""
    column, value = columns[0], key[0]
    if len(columns) == 1:
        return f"{column} > ?", [value]
    rest, params = _after(columns[1:], key[1:])
    if value is None:  # nulls come first: every non-null value is after it
        return f"({column} IS NOT NULL OR ({column} IS NULL AND {rest}))", params
    return f"({column} > ? OR ({column} = ? AND {rest}))", [value, value, *params]


async def read_page(
    db: aiosqlite.Connection,
    *,
    fields: str,
    source: str,
    keyset: Keyset,
    clauses: Sequence[str] = (),
    params: Sequence[Any] = (),
    after: str | None = None,
    limit: int,
) -> Page[tuple[Any, ...]]:
    """``SELECT fields FROM source WHERE clauses``, in ``keyset``'s order, after the cursor
    ``after`` (RequestError when it is not one of this list's), at most ``limit`` rows
    (without the sort-key columns)."""
    where, values = list(clauses), list(params)
    if after is not None:
        condition, more = keyset.after(after)
        where.append(condition)
        values += more
    order = ", ".join(keyset.columns)
    query = f"SELECT {fields}, {order} FROM {source}"
    if where:
        query += " WHERE " + " AND ".join(where)
    query += f" ORDER BY {order} LIMIT ?"
    async with db.execute(query, [*values, limit + 1]) as cursor:
        found = list(await cursor.fetchall())
    width = len(found[0]) - len(keyset.columns) if found else 0
    rows = [tuple(row[:width]) for row in found[:limit]]
    cut = len(found) > limit
    last = found[limit - 1] if cut else None
    return Page(rows, None if last is None else keyset.listing.cursor(last[width:]))
