"""The snapshots table of the view: one row per snapshot, its folded state and where it is.

Kept in the sandbox view's database (the one SQLite boundary), written in
the same transaction as the sandboxes and the position, so a snapshot and
the sandbox that records it never disagree about how far the view has read.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import aiosqlite
import msgspec

from sandboxer.domain.snapshot_state import SnapshotState
from sandboxer.pagination import DEFAULT_LIMIT, SNAPSHOTS, Page
from sandboxer.projections.pages import Keyset, read_page
from sandboxer.projections.rows import write_rows

__all__ = [
    "SNAPSHOTS_SCHEMA",
    "list_snapshots",
    "load_snapshot",
    "save_snapshots",
    "snapshot_to_dict",
]

SNAPSHOTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    snapshot_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    sandbox_id TEXT,
    object TEXT,
    requested_at TEXT,
    last_seq INTEGER NOT NULL,
    state BLOB NOT NULL,
    project TEXT
);
CREATE INDEX IF NOT EXISTS snapshots_sandbox ON snapshots(sandbox_id);
CREATE INDEX IF NOT EXISTS snapshots_project ON snapshots(project, requested_at);
"""

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(SnapshotState).decode


def snapshot_to_dict(state: SnapshotState) -> dict[str, Any]:
    """The JSON-able view of a snapshot that queries return."""
    data: dict[str, Any] = msgspec.to_builtins(state)
    return data


async def save_snapshots(
    db: aiosqlite.Connection, states: Iterable[tuple[SnapshotState, int, str]]
) -> None:
    """Write changed rows, each with the project it belongs to (the caller finds it, by
    ``key_access.find_snapshot_owner``, and commits, with the position)."""
    await write_rows(
        db,
        "INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                s.snapshot_id,
                s.status,
                s.sandbox_id,
                s.object,
                s.requested_at,
                seq,
                _encode(s),
                owner,
            )
            for s, seq, owner in states
        ],
    )


async def load_snapshot(db: aiosqlite.Connection, snapshot_id: str) -> SnapshotState | None:
    async with db.execute("SELECT state FROM snapshots WHERE snapshot_id = ?", (snapshot_id,)) as c:
        row = await c.fetchone()
    return _decode(row[0]) if row else None


SNAPSHOT_ORDER = Keyset(SNAPSHOTS, ("requested_at", "snapshot_id"))


async def list_snapshots(
    db: aiosqlite.Connection,
    *,
    sandbox_id: str | None = None,
    include_deleted: bool = False,
    project: str | None = None,
    after: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> Page[SnapshotState]:
    """Snapshots in the order they were requested, after the cursor ``after``; deleted ones
    only when asked for. With ``project``: that project's only (the column holds each
    snapshot's owner, also for one recorded before snapshots recorded their project), so
    the limit counts its rows alone."""
    clauses: list[str] = []
    params: list[Any] = []
    if project is not None:
        clauses.append("project = ?")
        params.append(project)
    if sandbox_id is not None:
        clauses.append("sandbox_id = ?")
        params.append(sandbox_id)
    if not include_deleted:
        clauses.append("status != 'deleted'")
    page = await read_page(
        db,
        fields="state",
        source="snapshots",
        keyset=SNAPSHOT_ORDER,
        clauses=clauses,
        params=params,
        after=after,
        limit=limit,
    )
    return page.map(lambda row: _decode(row[0]))
