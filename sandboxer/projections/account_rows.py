"""The credits and usage tables of the view: one row per project's account, one per
metered sandbox and project (docs/payments.md).

A usage row is keyed by the sandbox id *and* the project metered: sandbox ids are the
clients', one namespace across projects, and a create that lost its id to another
project is metered at zero on its own account (``release_lost_reservation``); keyed by
the id alone, that row replaced the owner's.

Kept in the sandbox view's database and written in the same transaction as
its other rows and its position, like the snapshots (``snapshot_rows.py``),
so a rebuild from the log gives the same rows as live projection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import aiosqlite
import msgspec

from sandboxer.clock import utc_now
from sandboxer.domain.account_state import (
    PROJECT_RULE,
    AccountState,
    day_key,
    evolve_working,
    is_valid_project,
    month_key,
    period_key,
    working_copy,
)
from sandboxer.domain.timestamps import shift
from sandboxer.errors import RequestError
from sandboxer.events.account_events import AccountEvent, UsageMetered
from sandboxer.pagination import ACCOUNTS, DEFAULT_LIMIT, USAGE, Page, page_after, page_limit
from sandboxer.projections.pages import Keyset, read_page

__all__ = [
    "ACCOUNT_SCHEMA",
    "ACCOUNT_TABLES",
    "CONSUMER_GROUPS",
    "AccountRows",
    "account_to_dict",
    "answer_account_query",
    "list_accounts",
    "list_usage",
    "load_account",
    "save_account_rows",
    "usage_by_consumer",
    "usage_summary",
]

ACCOUNT_SCHEMA = """
CREATE TABLE IF NOT EXISTS credits (
    project TEXT PRIMARY KEY,
    balance INTEGER NOT NULL,
    reserved INTEGER NOT NULL,
    budget_limit INTEGER,
    budget_period TEXT NOT NULL,
    updated_at TEXT,
    last_seq INTEGER NOT NULL,
    state BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS usage (
    sandbox_id TEXT NOT NULL,
    project TEXT NOT NULL,
    profile TEXT,
    extension TEXT,
    seconds INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    byok INTEGER NOT NULL,
    price TEXT NOT NULL,
    at TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (sandbox_id, project)
);
CREATE INDEX IF NOT EXISTS usage_at ON usage(at);
CREATE INDEX IF NOT EXISTS usage_project ON usage(project, at);
"""

ACCOUNT_TABLES = (("credits", "project"), ("usage", "sandbox_id, project"))
"""The tables ``SandboxView.dump`` compares, with their keys."""

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(AccountState).decode

CONSUMER_GROUPS = ("harness", "session_id", "run_id", "job_id")
"""What ``usage.list``'s ``by`` may group by: a consumer part (docs/protocol.md#consumer-attribution)."""

LoadAccount = Callable[[str], Awaitable[AccountState | None]]


class AccountRows:
    """Accounts folded since the last flush, and the usage rows to write."""

    def __init__(self) -> None:
        self.known: dict[str, AccountState] = {}
        self.dirty: dict[str, int] = {}
        self.usage: list[tuple[str, UsageMetered, int]] = []

    def __bool__(self) -> bool:
        return bool(self.dirty or self.usage)

    async def apply(self, event: AccountEvent, seq: int, load: LoadAccount | None) -> None:
        """Fold one account event; ``load`` reads a state back from the view (None: the view
        is being rebuilt and holds nothing yet)."""
        project = event.project
        state = self.known.get(project)
        if state is None:
            stored = None if load is None else await load(project)
            state = stored or AccountState(project=project)
        if project not in self.dirty:
            # Its first event since the last take: the state taken then may still be being
            # written, so this fold works on a copy of its own until the next take, and
            # copies the reservations once per take, not at every event.
            state = working_copy(state)
        self.known[project] = evolve_working(state, event)
        self.dirty[project] = seq
        if isinstance(event, UsageMetered):
            self.usage.append((project, event, seq))

    def take(self) -> AccountRows:
        """The rows changed since the last take, handed over to be written (the known states
        stay; the changes start again empty)."""
        taken = AccountRows()
        taken.dirty, self.dirty = self.dirty, {}
        taken.usage, self.usage = self.usage, []
        taken.known = {k: self.known[k] for k in taken.dirty}
        return taken


async def save_account_rows(db: aiosqlite.Connection, rows: AccountRows) -> None:
    """Write the changed rows (the caller commits, with the position)."""
    await db.executemany(
        "INSERT OR REPLACE INTO credits VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                s.project,
                s.balance,
                s.reserved,
                s.budget_limit,
                s.budget_period,
                s.updated_at,
                seq,
                _encode(s),
            )
            for s, seq in ((rows.known[p], seq) for p, seq in rows.dirty.items())
        ],
    )
    await db.executemany(
        "INSERT OR REPLACE INTO usage VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                e.sandbox_id,
                project,
                e.profile,
                e.extension,
                e.seconds,
                e.amount,
                int(e.byok),
                e.price,
                e.at,
                seq,
            )
            for project, e, seq in rows.usage
        ],
    )


async def load_account(db: aiosqlite.Connection, project: str) -> AccountState | None:
    async with db.execute("SELECT state FROM credits WHERE project = ?", (project,)) as cursor:
        row = await cursor.fetchone()
    return _decode(row[0]) if row else None


BY_PROJECT = Keyset(ACCOUNTS, ("project",))
BY_METERING = Keyset(USAGE, ("u.seq", "u.sandbox_id"))


async def list_accounts(
    db: aiosqlite.Connection, limit: int = DEFAULT_LIMIT, after: str | None = None
) -> Page[AccountState]:
    """The accounts by project, after the cursor ``after``."""
    page = await read_page(
        db, fields="state", source="credits", keyset=BY_PROJECT, after=after, limit=limit
    )
    return page.map(lambda row: _decode(row[0]))


def account_to_dict(state: AccountState, now: str) -> dict[str, Any]:
    """The JSON-able view of an account that queries return, with its spending now."""
    budget_key = period_key(now, state.budget_period)
    return {
        "project": state.project,
        "balance": state.balance,
        "reserved": state.reserved,
        "available": state.available,
        "added": state.added,
        "debited": state.debited,
        "spent_today": state.spent.get(day_key(now), 0),
        "spent_this_month": state.spent.get(month_key(now), 0),
        "budget": None
        if state.budget_limit is None
        else {
            "limit": state.budget_limit,
            "period": state.budget_period,
            "period_key": budget_key,
            "spent": state.spent.get(budget_key, 0),
        },
        "reservations": {k: v.amount for k, v in sorted(state.reservations.items())},
        "byok": dict(state.byok),
        "metered": state.metered,
        "version": state.version,
        "updated_at": state.updated_at,
        "unit": "credit = 1 micro-USD",
    }


def _usage_clauses(
    project: str | None, since: str | None, until: str | None
) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if project is not None:
        clauses.append("u.project = ?")
        params.append(project)
    if since is not None:
        clauses.append("u.at >= ?")
        params.append(since)
    if until is not None:
        clauses.append("u.at < ?")
        params.append(until)
    return clauses, params


def _usage_where(
    project: str | None, since: str | None, until: str | None
) -> tuple[str, list[Any]]:
    clauses, params = _usage_clauses(project, since, until)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


async def list_usage(
    db: aiosqlite.Connection,
    *,
    project: str | None = None,
    since: str | None = None,
    until: str | None = None,
    after: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> Page[dict[str, Any]]:
    """Metered sandboxes, oldest first, after the cursor ``after``."""
    clauses, params = _usage_clauses(project, since, until)
    page = await read_page(
        db,
        fields="sandbox_id, project, profile, extension, seconds, amount, byok, price, at",
        source="usage AS u",
        keyset=BY_METERING,
        clauses=clauses,
        params=params,
        after=after,
        limit=limit,
    )
    keys = ("sandbox_id", "project", "profile", "extension", "seconds", "amount", "byok")
    return page.map(
        lambda row: {
            **dict(zip(keys, row[:7], strict=True)),
            "byok": bool(row[6]),
            "price": row[7],
            "at": row[8],
        }
    )


async def usage_by_consumer(
    db: aiosqlite.Connection,
    by: str,
    *,
    project: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> list[dict[str, Any]]:
    """Spend by one part of the sandboxes' consumer (``harness``, ``session_id``, ``run_id``,
    ``job_id``; None for sandboxes that named none), from the sandbox rows' consumer columns:
    a usage row's sandbox is the one of its project (another project's create that lost the
    id has a row of its own, and no consumer)."""
    if by not in CONSUMER_GROUPS:  # a column name: only ever one of these
        raise RequestError(f"usage can be grouped by {', '.join(CONSUMER_GROUPS)}, not {by!r}")
    where, params = _usage_where(project, since, until)
    query = (
        f"SELECT s.{by}, COUNT(*), SUM(u.seconds), SUM(u.amount), SUM(u.byok) "
        "FROM usage AS u LEFT JOIN sandboxes AS s "
        f"ON s.sandbox_id = u.sandbox_id AND s.project = u.project{where} "
        f"GROUP BY s.{by} ORDER BY s.{by}"
    )
    async with db.execute(query, params) as cursor:
        rows = await cursor.fetchall()
    return [
        {
            by: group,
            "sandboxes": int(count),
            "seconds": int(seconds or 0),
            "amount": int(amount or 0),
            "byok_sandboxes": int(byok or 0),
        }
        for group, count, seconds, amount, byok in rows
    ]


async def usage_summary(
    db: aiosqlite.Connection,
    *,
    project: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> list[dict[str, Any]]:
    """Spend by project, profile and backend: sandboxes, seconds and credits of each."""
    where, params = _usage_where(project, since, until)
    query = (
        "SELECT project, profile, extension, COUNT(*), SUM(seconds), SUM(amount), SUM(byok) "
        f"FROM usage AS u{where} GROUP BY project, profile, extension "
        "ORDER BY project, profile, extension"
    )
    async with db.execute(query, params) as cursor:
        rows = await cursor.fetchall()
    return [
        {
            "project": p,
            "profile": profile,
            "extension": extension,
            "sandboxes": int(count),
            "seconds": int(seconds or 0),
            "amount": int(amount or 0),
            "byok_sandboxes": int(byok or 0),
        }
        for p, profile, extension, count, seconds, amount, byok in rows
    ]


def _text(request: dict[str, Any], name: str) -> str | None:
    value = request.get(name)
    if value is not None and not isinstance(value, str):
        raise RequestError(f"field {name!r} must be a string")
    return value


def _utc(request: dict[str, Any], name: str) -> str | None:
    """A UTC time as events write it (``2026-12-01T00:00:00.000Z``), or a date (``2026-12-01``,
    its midnight): compared with the rows' times as text, so nothing else is accepted."""
    value = _text(request, name)
    if value is None:
        return None
    if len(value) == 10:
        value += "T00:00:00.000Z"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.utcoffset() != timedelta(0) or not value.endswith("Z"):
        raise RequestError(f"field {name!r} must be a UTC time such as 2026-12-01T00:00:00.000Z")
    return shift(value, 0)


def _project(request: dict[str, Any], *, required: bool) -> str | None:
    project = _text(request, "project")
    if project is None and required:
        raise RequestError("field 'project' is required")
    if project is not None and not is_valid_project(project):
        raise RequestError(f"invalid project {project[:100]!r}: use {PROJECT_RULE}")
    return project


async def answer_account_query(
    kind: str, db: aiosqlite.Connection, request: dict[str, Any], now: str | None = None
) -> dict[str, Any]:
    """``credits.get``, ``credits.list`` and ``usage.list`` (docs/protocol.md#queries)."""
    now = now or utc_now()
    if kind == "credits.get":
        state = await load_account(db, str(_project(request, required=True)))
        return {"account": None if state is None else account_to_dict(state, now)}
    limit = page_limit(request)
    after = page_after(request)
    if kind == "credits.list":
        accounts = await list_accounts(db, limit, after)
        return {"accounts": [account_to_dict(s, now) for s in accounts], "next": accounts.next}
    window = {
        "project": _project(request, required=False),
        "since": _utc(request, "since"),
        "until": _utc(request, "until"),
    }
    by = _text(request, "by")
    summary = (
        await usage_summary(db, **window)
        if by is None
        else await usage_by_consumer(db, by, **window)
    )
    rows = await list_usage(db, **window, after=after, limit=limit)
    return {
        "usage": rows,
        "next": rows.next,
        "summary": summary,
        "total": {
            "sandboxes": sum(row["sandboxes"] for row in summary),
            "seconds": sum(row["seconds"] for row in summary),
            "amount": sum(row["amount"] for row in summary),
        },
        "by": by,
        "unit": "credit = 1 micro-USD",
    }
