"""Keyset pagination's cursors: where a page of a list ends, as an opaque string.

Every list a query answers (``sandbox.list``, ``snapshot.list``, ``credits.list``,
``usage.list``, ``key.list``) is in a total order: its sort columns, the last the
row's unique id. A page that was cut answers ``next``, the cursor of its last row;
the request ``after: <cursor>`` asks for the rows after that one. A cursor names the
position, not an offset, so rows added or removed meanwhile never make a page skip
or repeat a row (docs/protocol.md#lists).

The cursor is base64url (no padding) of ``{"l": <list>, "k": [<sort key>...]}``:
readable by anyone who decodes it, but opaque by contract, so its shape may change.
A cursor that does not decode, or that another list made, is refused here with
:class:`~sandboxer.errors.RequestError` (the HTTP gateway answers 422).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sandboxer.errors import RequestError

__all__ = [
    "ACCOUNTS",
    "DEFAULT_LIMIT",
    "KEYS",
    "MAX_CURSOR",
    "MAX_LIMIT",
    "SANDBOXES",
    "SANDBOXES_DUE",
    "SNAPSHOTS",
    "USAGE",
    "Listing",
    "Page",
    "page_after",
    "page_limit",
]

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
MAX_CURSOR = 1024
"""The longest cursor read: the sort keys are ids, times and project names, far shorter."""

SortKey = tuple[str | int | None, ...]
T = TypeVar("T")
U = TypeVar("U")


class Page(list[T], Generic[T]):
    """One page of a list: its rows, as a list (so code that took the whole list before
    cursors existed reads a page the same way), and :attr:`next`."""

    def __init__(self, rows: Iterable[T] = (), next: str | None = None) -> None:
        super().__init__(rows)
        self.next = next
        """The cursor of the page after this one, to pass as ``after``; None when this
        page is the last (or the service is older than cursors)."""

    def map(self, convert: Callable[[T], U]) -> Page[U]:
        """The same page with each row converted."""
        return Page([convert(row) for row in self], self.next)


@dataclass(frozen=True)
class Listing:
    """One list's order: its ``name`` (in its cursors, so a cursor of another list is
    refused rather than read as a wrong position) and the type of each part of its sort
    key. Every part may be null (SQLite sorts nulls first) but the last, the row's id."""

    name: str
    parts: tuple[type[str] | type[int], ...]

    def cursor(self, key: Sequence[Any]) -> str:
        """The cursor of the row whose sort key is ``key``."""
        if len(key) != len(self.parts):
            raise ValueError(f"{self.name}: a sort key of {len(self.parts)} parts, not {key!r}")
        text = json.dumps({"l": self.name, "k": list(key)}, separators=(",", ":"))
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    def position(self, cursor: str) -> SortKey:
        """The sort key ``cursor`` names; RequestError when it is not one of this list's."""
        data = _decoded(cursor) if len(cursor) <= MAX_CURSOR else {}
        key = data.get("k")
        if data.get("l") != self.name or not isinstance(key, list) or not self._fits(key):
            raise RequestError(
                f"invalid cursor {cursor[:40]!r} for {self.name}: pass the 'next' of the "
                "previous page as it came, or list from the start without 'after'"
            )
        return tuple(key)

    def _fits(self, key: list[Any]) -> bool:
        if len(key) != len(self.parts) or key[-1] is None:
            return False
        return all(_fits(value, kind) for value, kind in zip(key, self.parts, strict=True))


def _decoded(cursor: str) -> dict[str, Any]:
    """The object a cursor encodes; empty when it encodes none."""
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, RecursionError):  # ValueError: bad UTF-8 or JSON
        return {}
    return data if isinstance(data, dict) else {}


def _fits(value: object, kind: type) -> bool:
    if value is None:
        return True
    if kind is int:  # as SQLite stores it: a larger one could not even be compared
        return type(value) is int and -(2**63) <= value < 2**63
    if kind is str and isinstance(value, str):
        # As SQLite binds it: JSON allows a lone surrogate ("\ud800"), UTF-8 does not.
        try:
            value.encode()
        except UnicodeEncodeError:
            return False
        return True
    return isinstance(value, kind)


SANDBOXES = Listing("sandboxes", (str, str))
"""``sandbox.list``: by ``created_at``, then ``sandbox_id``."""
SANDBOXES_DUE = Listing("sandboxes.due", (str, str))
"""``sandbox.list`` with ``due_before``: by ``due_at``, then ``sandbox_id``."""
SNAPSHOTS = Listing("snapshots", (str, str))
"""``snapshot.list``: by ``requested_at``, then ``snapshot_id``."""
ACCOUNTS = Listing("accounts", (str,))
"""``credits.list``: by ``project`` (each project has one account)."""
USAGE = Listing("usage", (int, str))
"""``usage.list``'s rows: by the stream sequence that metered them, then ``sandbox_id``."""
KEYS = Listing("keys", (str, str))
"""``key.list``: by ``created_at``, then ``key_id``."""


def page_limit(request: Mapping[str, Any]) -> int:
    """A list request's ``limit``: rows in one page, 1 to :data:`MAX_LIMIT`."""
    limit = request.get("limit", DEFAULT_LIMIT)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 0 < limit <= MAX_LIMIT:
        raise RequestError(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return limit


def page_after(request: Mapping[str, Any]) -> str | None:
    """A list request's ``after``: the cursor of the page before (None: from the start).
    Only its type is checked here; the list reading it checks that it is one of its own."""
    after = request.get("after")
    if after is not None and not isinstance(after, str):
        raise RequestError("field 'after' must be a string: the 'next' of the previous page")
    return after
