"""Lists over HTTP a page at a time (docs/http-api.md#pages): ``?limit=`` and ``?after=``
in, the body's ``next`` and a ``Link: <...>; rel="next"`` header out.

A cursor is checked here, before anything is asked of the service, so one that is not
the list's own is a 422 ``invalid_request`` naming ``query.after``, as every other bad
query parameter is, rather than the service's refusal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Query, Request, Response
from pydantic import AfterValidator

from sandboxer.errors import RequestError
from sandboxer.pagination import ACCOUNTS, MAX_CURSOR, SANDBOXES, SNAPSHOTS, USAGE, Listing

__all__ = ["AccountsAfter", "Limit", "SandboxesAfter", "SnapshotsAfter", "UsageAfter", "paged"]

MAX_PAGE = 1000
"""The most rows one HTTP page holds (the bus's queries allow more)."""

AFTER = "the `next` of the previous page: the rows after it (omit for the first page)"


_AFTER = Query(max_length=MAX_CURSOR, description=AFTER)


def _own_cursor(listing: Listing) -> Callable[[str | None], str | None]:
    def check(value: str | None) -> str | None:
        if value is not None:
            try:
                listing.position(value)
            except RequestError as exc:
                raise ValueError(exc.message) from None  # pydantic makes it a 422
        return value

    return check


SandboxesAfter = Annotated[str | None, _AFTER, AfterValidator(_own_cursor(SANDBOXES))]
SnapshotsAfter = Annotated[str | None, _AFTER, AfterValidator(_own_cursor(SNAPSHOTS))]
AccountsAfter = Annotated[str | None, _AFTER, AfterValidator(_own_cursor(ACCOUNTS))]
UsageAfter = Annotated[str | None, _AFTER, AfterValidator(_own_cursor(USAGE))]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="rows in one page")]


def paged(
    request: Request, response: Response, body: dict[str, Any], after: str | None
) -> dict[str, Any]:
    """``body`` with ``next`` (the cursor ``after`` the page's last row, or None), and the
    same link in a ``Link`` header: this request's URL with ``after`` set to it (relative,
    so it holds behind a proxy that rewrites the host)."""
    body = {**body, "next": after}
    if after is not None:
        url = request.url.include_query_params(after=after)
        response.headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'
    return body
