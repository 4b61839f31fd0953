"""Pages of a list, as the clients read them (docs/python-client.md#pages).

Every list call (``list_sandboxes``, ``snapshots``, ``credits``, ``usage``, and the
low-level client's and the CLI's) takes ``after`` and ``limit`` and answers one page
with ``next``, the cursor of the page after it. :func:`pages` walks them all, for any
of those calls, so no list has a walking loop of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

from sandboxer.errors import BusError, RequestError
from sandboxer.pagination import Page

__all__ = ["Paged", "page_of", "paged_reply", "pages"]


class Paged(Protocol):
    """A page: anything with the cursor of the page after it (None on the last)."""

    @property
    def next(self) -> str | None: ...


P = TypeVar("P", bound=Paged)


def paged_reply(reply: Mapping[str, Any], after: str | None) -> Mapping[str, Any]:
    """``reply`` to a list request with ``after``; RequestError when the service ignored it.
    A service older than cursors knows no ``after``: it answers the first page again,
    without ``next``, which would look like the page asked for."""
    if after is not None and "next" not in reply:
        raise RequestError(
            "the service is older than list cursors: it cannot go on 'after' a page "
            "(upgrade it, or list without 'after' and with a larger 'limit')"
        )
    return reply


def page_of(reply: Mapping[str, Any], rows: str, after: str | None) -> Page[dict[str, Any]]:
    """The page in a list's ``reply`` (its rows under ``rows``), asked ``after`` a cursor."""
    found = paged_reply(reply, after).get(rows)
    items = [row for row in found if isinstance(row, dict)] if isinstance(found, list) else []
    cursor = reply.get("next")
    return Page(items, cursor if isinstance(cursor, str) else None)


async def pages(
    list_page: Callable[..., Awaitable[P]], /, *, after: str | None = None, **asked: Any
) -> AsyncIterator[P]:
    """Every page of a list, one request each: ``list_page(after=..., **asked)`` from
    ``after`` (None: the first page) until a page has no ``next``.

    ``async for page in pages(sbx.list_sandboxes, status="ready", limit=200): ...``"""
    while True:
        page = await list_page(after=after, **asked)
        yield page
        if page.next is None:
            return
        if page.next == after:  # a page that would come again: never loop on it
            raise BusError(f"the service answered the cursor {after!r} with itself")
        after = page.next
