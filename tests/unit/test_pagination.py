"""Keyset pagination: the cursor codec (sandboxer/pagination.py) and the pages the view
reads in SQL (projections/pages.py), walked across boundaries between rows whose sort
keys are equal or null, where an order without a tie-breaker skips or repeats rows."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from sandboxer.domain.account_state import AccountState
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.domain.snapshot_state import SnapshotState
from sandboxer.errors import RequestError
from sandboxer.pagination import (
    ACCOUNTS,
    KEYS,
    MAX_CURSOR,
    SANDBOXES,
    USAGE,
    Listing,
    Page,
    page_after,
    page_limit,
)
from sandboxer.projections.account_rows import (
    ACCOUNT_SCHEMA,
    AccountRows,
    answer_account_query,
    save_account_rows,
)
from sandboxer.projections.pages import Keyset, read_page
from sandboxer.projections.sandbox_view import SandboxView

AT = "2026-12-02T10:00:00.000Z"


def forged(data: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


# -- the cursor ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listing", "key"),
    [(SANDBOXES, (AT, "abc12345")), (SANDBOXES, (None, "abc12345")), (USAGE, (7, "x"))],
)
def test_a_cursor_names_the_sort_key_it_was_made_of(listing: Listing, key: tuple[Any]) -> None:
    cursor = listing.cursor(key)
    assert listing.position(cursor) == key
    assert cursor.isascii()
    assert not set(cursor) & set("=/+")  # base64url without padding: safe in a URL


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "not a cursor!",
        "%%%",
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),  # not UTF-8
        forged([AT, "abc12345"]),  # not an object
        forged({"l": "keys", "k": [AT, "abc12345"]}),  # another list's
        forged({"l": "sandboxes", "k": ["abc12345"]}),  # too short
        forged({"l": "sandboxes", "k": [AT, None]}),  # no id
        forged({"l": "sandboxes", "k": [AT, 5]}),  # an id is a string
        forged({"l": "sandboxes", "k": "abc"}),
        forged({"l": "sandboxes"}),
        base64.urlsafe_b64encode(b"[" * 700).decode(),  # deep, and not JSON
        SANDBOXES.cursor((AT, "x" * MAX_CURSOR)),  # too long to be one of ours
        forged({"l": "sandboxes", "k": ["\ud800", "abc12345"]}),  # a lone surrogate: unbindable
    ],
)
def test_a_cursor_that_is_not_the_lists_own_is_refused_with_a_reason(cursor: str) -> None:
    with pytest.raises(RequestError, match=r"invalid cursor .* 'next' of the previous page"):
        SANDBOXES.position(cursor)


@pytest.mark.parametrize("value", [True, 2**63, 1.5, "7"])
def test_a_sequence_in_a_cursor_is_a_whole_number_sqlite_can_compare(value: Any) -> None:
    with pytest.raises(RequestError):
        USAGE.position(forged({"l": "usage", "k": [value, "x"]}))


def test_a_requests_limit_and_after_are_checked() -> None:
    assert page_limit({}) == 1000
    assert page_limit({"limit": 3}) == 3
    for bad in (0, 10_001, True, "3", None):
        with pytest.raises(RequestError, match="limit must be a whole number from 1 to 10000"):
            page_limit({"limit": bad})
    assert page_after({}) is None
    with pytest.raises(RequestError, match="'after' must be a string"):
        page_after({"after": 3})


def test_a_page_is_the_list_it_holds_with_the_cursor_after_it() -> None:
    page = Page([1, 2], "c")
    assert page == [1, 2]
    assert page.map(str) == ["1", "2"]
    assert page.map(str).next == "c"
    assert Page().next is None


# -- pages in SQL ----------------------------------------------------------------------------

ROWS = [
    # (at, id): ties and nulls on purpose, inserted out of order
    ("b", "r5"),
    (None, "r2"),
    ("a", "r4"),
    ("a", "r3"),
    (None, "r1"),
    ("b", "r6"),
    ("a", "r9"),
    ("c", "r7"),
]
ORDER = Keyset(Listing("things", (str, str)), ("at", "id"))


async def walk(db: aiosqlite.Connection, limit: int, **where: Any) -> list[list[str]]:
    """Every page of the table, following each page's cursor."""
    pages: list[list[str]] = []
    after = None
    while True:
        page = await read_page(
            db, fields="id", source="things", keyset=ORDER, after=after, limit=limit, **where
        )
        pages.append([row[0] for row in page])
        if page.next is None:
            return pages
        assert len(page) == limit  # only a full page can be cut
        after = page.next


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 7, 8, 9])
async def test_pages_split_rows_with_equal_or_null_sort_keys_without_skipping_or_repeating(
    limit: int,
) -> None:
    async with aiosqlite.connect(":memory:") as db:
        await db.execute("CREATE TABLE things (id TEXT PRIMARY KEY, at TEXT)")
        await db.executemany("INSERT INTO things VALUES (?, ?)", [(i, at) for at, i in ROWS])
        everything = ["r1", "r2", "r3", "r4", "r9", "r5", "r6", "r7"]  # nulls first, then id
        pages = await walk(db, limit)
        assert [row for page in pages for row in page] == everything
        assert len(pages) == max(1, -(-len(everything) // limit))
        # narrowed too: the cursor and the filter combine
        narrowed = await walk(db, limit, clauses=["at IS NOT ?"], params=["b"])
        assert [row for page in narrowed for row in page] == ["r1", "r2", "r3", "r4", "r9", "r7"]


async def test_a_page_goes_on_after_its_cursors_row_even_once_that_row_is_gone() -> None:
    async with aiosqlite.connect(":memory:") as db:
        await db.execute("CREATE TABLE things (id TEXT PRIMARY KEY, at TEXT)")
        await db.executemany("INSERT INTO things VALUES (?, ?)", [(i, at) for at, i in ROWS])
        first = await read_page(db, fields="id", source="things", keyset=ORDER, limit=3)
        assert [r[0] for r in first] == ["r1", "r2", "r3"]
        await db.execute("DELETE FROM things WHERE id IN ('r3', 'r4')")  # the last, the next
        await db.execute("INSERT INTO things VALUES ('r0', 'a')")  # sorts before the cursor
        second = await read_page(
            db, fields="id", source="things", keyset=ORDER, after=first.next, limit=3
        )
        assert [r[0] for r in second] == ["r9", "r5", "r6"]


async def test_the_sandbox_list_pages_in_creation_order_with_the_id_breaking_ties(
    tmp_path: Path,
) -> None:
    view = await SandboxView.open(tmp_path / "view.db")
    try:
        states = [
            SandboxState(sandbox_id=f"sbx{n:05}", status="ready", created_at=AT if n < 5 else None)
            for n in (6, 3, 1, 5, 2, 4, 0)
        ]
        await view.save([(s, i + 1) for i, s in enumerate(states)], [], len(states))
        first = await view.list_states(limit=3)
        assert [s.sandbox_id for s in first] == ["sbx00005", "sbx00006", "sbx00000"]
        second = await view.list_states(limit=3, after=first.next)
        assert [s.sandbox_id for s in second] == ["sbx00001", "sbx00002", "sbx00003"]
        last = await view.list_states(limit=3, after=second.next)
        assert [s.sandbox_id for s in last] == ["sbx00004"]
        assert last.next is None
        with pytest.raises(RequestError, match="invalid cursor"):
            await view.list_states(after=KEYS.cursor((AT, "sbx00001")))  # another list's
        # a cursor of the created order is not a position in the due order
        with pytest.raises(RequestError, match=r"for sandboxes\.due"):
            await view.list_states(due_before=AT, after=first.next)
        snaps = [
            SnapshotState(snapshot_id=f"snp{n:05}", sandbox_id="sbx00001", requested_at=AT)
            for n in (2, 0, 1)
        ]
        await view.save([], [], 8, snapshots=[(s, 8) for s in snaps])
        one = await view.list_snapshots(limit=2)
        assert [s.snapshot_id for s in one] == ["snp00000", "snp00001"]
        assert [s.snapshot_id for s in await view.list_snapshots(after=one.next)] == ["snp00002"]
    finally:
        await view.close()


async def test_credits_list_pages_by_project() -> None:
    async with aiosqlite.connect(":memory:") as db:
        await db.executescript(ACCOUNT_SCHEMA)
        rows = AccountRows()
        for name in ("gamma", "alpha", "delta", "beta", "eta", "zeta", "epsilon"):
            rows.known[name] = AccountState(project=name)
            rows.dirty[name] = 1
        await save_account_rows(db, rows)
        seen: list[list[str]] = []
        request: dict[str, Any] = {"limit": 3}
        while True:
            reply = await answer_account_query("credits.list", db, request, now=AT)
            seen.append([a["project"] for a in reply["accounts"]])
            if reply["next"] is None:
                break
            request = {"limit": 3, "after": reply["next"]}
        assert seen == [["alpha", "beta", "delta"], ["epsilon", "eta", "gamma"], ["zeta"]]
        default = await answer_account_query("credits.list", db, {}, now=AT)
        assert len(default["accounts"]) == 7
        assert default["next"] is None
        with pytest.raises(RequestError, match="invalid cursor"):
            await answer_account_query("credits.list", db, {"after": "garbage"}, now=AT)
        with pytest.raises(RequestError, match=r"invalid cursor .* for accounts"):
            await answer_account_query(
                "credits.list", db, {"after": SANDBOXES.cursor((AT, "x"))}, now=AT
            )
        assert ACCOUNTS.position(ACCOUNTS.cursor(("delta",))) == ("delta",)
