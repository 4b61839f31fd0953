"""The list commands' pages: ``--limit``, ``--after``, ``--all-pages``, and the line on
stderr that says a list was cut and how to go on (docs/cli.md#lists).

Output stays what it was, a table or a JSON list of rows, so scripts reading it go on
working; what says that more rows follow goes to stderr, with the cursor to go on from.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from sandboxer.cli.output import say
from sandboxer.pagination import MAX_LIMIT, Page

if TYPE_CHECKING:
    from sandboxer.client.pages import Paged

__all__ = ["AfterOpt", "AllPagesOpt", "LimitOpt", "read_pages", "tell_cut"]

T = TypeVar("T")

AfterOpt = Annotated[
    str | None,
    typer.Option("--after", help="go on after this cursor (the one a cut list printed)"),
]
LimitOpt = Annotated[
    int, typer.Option("--limit", min=1, max=MAX_LIMIT, help="at most this many rows a page")
]
AllPagesOpt = Annotated[
    bool, typer.Option("--all-pages", help="every page, one request each, not only the first")
]


async def read_pages(
    list_page: Callable[..., Awaitable[Page[T]]],
    *,
    after: str | None,
    all_pages: bool,
    **asked: Any,
) -> Page[T]:
    """One page of ``list_page`` after ``after``; with ``all_pages``, every page from there
    on, as one (whose ``next`` is None)."""
    from sandboxer.client.pages import pages

    if not all_pages:
        return await list_page(after=after, **asked)
    every: Page[T] = Page()
    async for page in pages(list_page, after=after, **asked):
        every.extend(page)
    return every


def tell_cut(page: Paged, what: str) -> None:
    """Say on stderr that ``page`` is not the last, and how to read on."""
    if page.next is not None:
        say(
            f"more {what} follow: run again with --after {page.next} "
            f"(or with --all-pages for all of them)"
        )
