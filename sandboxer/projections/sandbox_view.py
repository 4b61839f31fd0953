"""The sandbox view: one row per sandbox and one per rejected command, in SQLite.

The stream sequence the view has reached is written in the same transaction
as the rows, so after a crash the view resumes exactly where its data ends.
Rows keep the whole folded state (msgspec JSON) so the projector can evolve
a sandbox without replaying it, plus columns for filtering.

Because rows hold the domain's state as it is shaped in memory, the view
records a fingerprint of its tables *and* of that shape
(:data:`FINGERPRINT`). A view written by a different shape is stale: the
projector notices at start-up and rebuilds it from the log.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec

from sandboxer.domain.account_state import AccountState, project_of
from sandboxer.domain.deadlines import due
from sandboxer.domain.key_access import find_snapshot_owner
from sandboxer.domain.key_state import KeyState
from sandboxer.domain.route_signals import RouteSignals
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.domain.snapshot_state import SnapshotState
from sandboxer.events.types import CommandRejected, HostEvent, HostInspected
from sandboxer.pagination import DEFAULT_LIMIT, SANDBOXES, SANDBOXES_DUE, Page
from sandboxer.projections.account_rows import (
    ACCOUNT_SCHEMA,
    ACCOUNT_TABLES,
    AccountRows,
    load_account,
    save_account_rows,
)
from sandboxer.projections.consumer_filter import ConsumerFilter
from sandboxer.projections.key_rows import (
    KEY_SCHEMA,
    KEY_TABLES,
    KeyRows,
    load_key,
    save_key_rows,
)
from sandboxer.projections.pages import Keyset, read_page
from sandboxer.projections.route_rows import (
    ROUTE_SCHEMA,
    ROUTE_TABLES,
    RouteSamples,
    load_signals,
    save_route_samples,
)
from sandboxer.projections.rows import write_rows
from sandboxer.projections.snapshot_rows import (
    SNAPSHOTS_SCHEMA,
    list_snapshots,
    load_snapshot,
    save_snapshots,
    snapshot_to_dict,
)

__all__ = ["FINGERPRINT", "SandboxView", "state_to_dict"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS sandboxes (
    sandbox_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    profile TEXT,
    extension TEXT,
    created_at TEXT,
    updated_at TEXT,
    last_seq INTEGER NOT NULL,
    state BLOB NOT NULL,
    due_at TEXT,
    harness TEXT,
    session_id TEXT,
    run_id TEXT,
    job_id TEXT,
    labels TEXT,
    project TEXT
);
CREATE INDEX IF NOT EXISTS sandboxes_status ON sandboxes(status);
CREATE INDEX IF NOT EXISTS sandboxes_project ON sandboxes(project, created_at);
CREATE INDEX IF NOT EXISTS sandboxes_harness ON sandboxes(harness) WHERE harness IS NOT NULL;
CREATE INDEX IF NOT EXISTS sandboxes_due ON sandboxes(due_at) WHERE due_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS rejections (
    key TEXT NOT NULL,
    project TEXT NOT NULL,
    command_id TEXT,
    seq INTEGER NOT NULL,
    event BLOB NOT NULL,
    PRIMARY KEY (key, project)
);
CREATE TABLE IF NOT EXISTS hosts (
    host TEXT PRIMARY KEY,
    extension TEXT NOT NULL,
    inspected_at TEXT,
    report BLOB,
    reaped_at TEXT,
    reaped BLOB,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS position (
    projection TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

SCHEMA += SNAPSHOTS_SCHEMA
SCHEMA += ROUTE_SCHEMA
SCHEMA += ACCOUNT_SCHEMA
SCHEMA += KEY_SCHEMA

VIEW_VERSION = 4
"""Bump when what the view derives from an event changes without its tables changing."""

FINGERPRINT = hashlib.sha256(
    f"{VIEW_VERSION}\n{SCHEMA}\n".encode()
    + json.dumps(msgspec.json.schema(SandboxState), sort_keys=True).encode()
    + json.dumps(msgspec.json.schema(SnapshotState), sort_keys=True).encode()
    + json.dumps(msgspec.json.schema(AccountState), sort_keys=True).encode()
    + json.dumps(msgspec.json.schema(KeyState), sort_keys=True).encode()
    # Rejections are stored as this version encodes them (fields it does not know dropped).
    + json.dumps(msgspec.json.schema(CommandRejected), sort_keys=True).encode()
).hexdigest()[:16]
"""What the rows were written by: the view's version, its tables and the state's shape."""

NAME = "sandboxes"
BY_CREATION = Keyset(SANDBOXES, ("created_at", "sandbox_id"))
BY_DUE = Keyset(SANDBOXES_DUE, ("due_at", "sandbox_id"))
_encode = msgspec.json.Encoder().encode
_decode_state = msgspec.json.Decoder(SandboxState).decode


def state_to_dict(state: SandboxState) -> dict[str, Any]:
    """The JSON-able view of a sandbox that queries return, with its next deadline
    (``due``: when and why it will expire, None when it cannot)."""
    data: dict[str, Any] = msgspec.to_builtins(state)
    deadline = due(state)
    data["due"] = None if deadline is None else {"at": deadline.at, "cause": deadline.cause}
    return data


def _due_at(state: SandboxState) -> str | None:
    deadline = due(state)
    return None if deadline is None else deadline.at


def _consumer_columns(state: SandboxState) -> tuple[str | None, ...]:
    """The consumer's parts as columns, for ``list``'s filters and usage grouping."""
    consumer = state.consumer
    if consumer is None:
        return (None, None, None, None, None)
    labels = json.dumps(consumer.labels, sort_keys=True) if consumer.labels else None
    return (consumer.harness, consumer.session_id, consumer.run_id, consumer.job_id, labels)


class SandboxView:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: Path, *, scratch: bool = False) -> SandboxView:
        """Open (or create) the view at ``path``. ``scratch``: a fresh file a rebuild fills
        and that is swapped in only once complete, so it needs no crash safety: no journal
        on disk and no syncs (a torn scratch file is thrown away and rebuilt again)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path)
        pragmas = (
            "PRAGMA journal_mode=MEMORY; PRAGMA synchronous=OFF;"
            if scratch
            else "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
        )
        await db.executescript(pragmas + SCHEMA)
        view = cls(db)
        if await view.fingerprint() is None and await view.position() == 0:
            await db.execute("INSERT INTO meta VALUES ('fingerprint', ?)", (FINGERPRINT,))
        await db.commit()
        return view

    async def fingerprint(self) -> str | None:
        """The fingerprint of the code that wrote this view (None: written before they existed)."""
        async with self._db.execute("SELECT value FROM meta WHERE key = 'fingerprint'") as c:
            row = await c.fetchone()
        return str(row[0]) if row else None

    async def is_current(self) -> bool:
        return await self.fingerprint() == FINGERPRINT

    async def close(self) -> None:
        await self._db.close()

    async def position(self) -> int:
        async with self._db.execute("SELECT seq FROM position WHERE projection = ?", (NAME,)) as c:
            row = await c.fetchone()
        return int(row[0]) if row else 0

    async def load_state(self, sandbox_id: str) -> SandboxState | None:
        async with self._db.execute(
            "SELECT state FROM sandboxes WHERE sandbox_id = ?", (sandbox_id,)
        ) as cursor:
            row = await cursor.fetchone()
        return _decode_state(row[0]) if row else None

    async def save(
        self,
        states: Iterable[tuple[SandboxState, int]],
        rejections: Iterable[tuple[CommandRejected, int]],
        position: int,
        host_events: Iterable[tuple[HostEvent, int]] = (),
        snapshots: Iterable[tuple[SnapshotState, int]] = (),
        routes: RouteSamples | None = None,
        accounts: AccountRows | None = None,
        keys: KeyRows | None = None,
    ) -> None:
        """Write changed rows and the new position in one transaction, rolled back when any
        write fails (a full disk, say): the view keeps what it had, and its position."""
        states = list(states)
        owned = await self._owned(snapshots, {s.sandbox_id: s for s, _ in states})
        try:
            if accounts:
                await save_account_rows(self._db, accounts)
            if keys:
                await save_key_rows(self._db, keys)
            if routes:
                await save_route_samples(self._db, routes)
            await save_snapshots(self._db, owned)
            for event, seq in host_events:
                await self._apply_host_event(event, seq)
            await write_rows(
                self._db,
                "INSERT OR REPLACE INTO sandboxes VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        s.sandbox_id,
                        s.status,
                        s.profile,
                        s.extension,
                        s.created_at,
                        s.updated_at,
                        seq,
                        _encode(s),
                        _due_at(s),
                        *_consumer_columns(s),
                        project_of(s.actor),
                    )
                    for s, seq in states
                ],
            )
            await write_rows(
                self._db,
                "INSERT OR REPLACE INTO rejections VALUES (?, ?, ?, ?, ?)",
                [
                    # One row per command id and rejected actor's project: a command id is
                    # anyone's to send, and another project's rejection under it must not
                    # take the place of this project's (query.command.rejection).
                    (
                        r.command_id or f"seq-{r.stream_seq}",
                        project_of(r.actor),
                        r.command_id,
                        seq,
                        _encode(r),
                    )
                    for r, seq in rejections
                ],
            )
            await self._db.execute(
                "INSERT OR REPLACE INTO position VALUES (?, ?)", (NAME, position)
            )
            await self._db.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                await self._db.rollback()
            raise

    async def _apply_host_event(self, event: HostEvent, seq: int) -> None:
        await self._db.execute(
            "INSERT OR IGNORE INTO hosts (host, extension, seq) VALUES (?, ?, ?)",
            (event.host, event.extension, seq),
        )
        if isinstance(event, HostInspected):
            await self._db.execute(
                "UPDATE hosts SET extension = ?, inspected_at = ?, report = ?, seq = ? "
                "WHERE host = ?",
                (event.extension, event.at, _encode(event.report), seq, event.host),
            )
        else:
            reaped = {"removed": event.removed, "marked_failed": event.marked_failed}
            await self._db.execute(
                "UPDATE hosts SET reaped_at = ?, reaped = ?, seq = ? WHERE host = ?",
                (event.at, _encode(reaped), seq, event.host),
            )

    async def hosts(self) -> list[dict[str, Any]]:
        async with self._db.execute(
            "SELECT host, extension, inspected_at, report, reaped_at, reaped FROM hosts "
            "ORDER BY host"
        ) as cursor:
            rows = await cursor.fetchall()
        return [
            {
                "host": host,
                "extension": extension,
                "inspected_at": inspected_at,
                "report": msgspec.json.decode(report) if report else None,
                "reaped_at": reaped_at,
                "reaped": msgspec.json.decode(reaped) if reaped else None,
            }
            for host, extension, inspected_at, report, reaped_at, reaped in rows
        ]

    async def _owned(
        self, snapshots: Iterable[tuple[SnapshotState, int]], batch: dict[str, SandboxState]
    ) -> list[tuple[SnapshotState, int, str]]:
        """Each snapshot with the project it belongs to, found as the gateway and the bus
        find it (its sandbox read from this batch or the view, only when the snapshot was
        recorded without its project): what ``snapshot.list`` narrows by."""

        async def read_sandbox(sandbox_id: str) -> dict[str, Any] | None:
            sandbox = batch.get(sandbox_id)
            if sandbox is None:
                sandbox = await self.load_state(sandbox_id)
            return None if sandbox is None else state_to_dict(sandbox)

        return [
            (s, seq, await find_snapshot_owner(snapshot_to_dict(s), read_sandbox))
            for s, seq in snapshots
        ]

    async def get(self, sandbox_id: str) -> SandboxState | None:
        return await self.load_state(sandbox_id)

    async def list_states(
        self,
        *,
        status: str | None = None,
        include_destroyed: bool = False,
        due_before: str | None = None,
        consumer: ConsumerFilter | None = None,
        project: str | None = None,
        after: str | None = None,
        limit: int = DEFAULT_LIMIT,
    ) -> Page[SandboxState]:
        """Sandboxes in creation order, after the cursor ``after``; with ``due_before``, only
        those whose TTL or idle deadline is at or before that time, earliest first (what the
        expirer sweeps); with ``consumer``, only those whose consumer has every part it
        names; with ``project``, only that project's (its creator's: what a key of the
        project may see)."""
        clauses: list[str] = []
        params: list[Any] = []
        if consumer is not None:
            clauses, params = consumer.where()
        if project is not None:
            clauses.append("project = ?")
            params.append(project)
        if due_before is not None:
            clauses.append("due_at IS NOT NULL AND due_at <= ?")
            params.append(due_before)
        if status:
            clauses.append("status = ?")
            params.append(status)
        elif not include_destroyed:
            clauses.append("status != 'destroyed'")
        page = await read_page(
            self._db,
            fields="state",
            source="sandboxes",
            keyset=BY_DUE if due_before is not None else BY_CREATION,
            clauses=clauses,
            params=params,
            after=after,
            limit=limit,
        )
        return page.map(lambda row: _decode_state(row[0]))

    async def load_snapshot(self, snapshot_id: str) -> SnapshotState | None:
        return await load_snapshot(self._db, snapshot_id)

    async def list_snapshots(
        self,
        *,
        sandbox_id: str | None = None,
        include_deleted: bool = False,
        project: str | None = None,
        after: str | None = None,
        limit: int = DEFAULT_LIMIT,
    ) -> Page[SnapshotState]:
        return await list_snapshots(
            self._db,
            sandbox_id=sandbox_id,
            include_deleted=include_deleted,
            project=project,
            after=after,
            limit=limit,
        )

    async def route_signals(
        self, now: str, project: str | None = None
    ) -> tuple[RouteSignals, dict[str, Any]]:
        """Routing's signals at ``now`` (and ``project``'s live count) and per-host latency
        (projections/route_rows.py)."""
        return await load_signals(self._db, now, project)

    @property
    def db(self) -> aiosqlite.Connection:
        """The view's connection, for the row modules' queries (credits, usage)."""
        return self._db

    async def load_account(self, project: str) -> AccountState | None:
        return await load_account(self._db, project)

    async def load_key(self, key_id: str) -> KeyState | None:
        return await load_key(self._db, key_id)

    async def rejection(self, key: str, project: str | None = None) -> dict[str, Any] | None:
        """The last rejection of the command ``key`` (its id, or ``seq-<N>``); with
        ``project``, the last one whose rejected actor is of that project (the one whose
        owner may see it, domain/key_access.event_owner)."""
        query, args = "SELECT event FROM rejections WHERE key = ?", [key]
        if project is not None:
            query, args = f"{query} AND project = ?", [key, project]
        async with self._db.execute(f"{query} ORDER BY seq DESC LIMIT 1", args) as c:
            row = await c.fetchone()
        return msgspec.json.decode(row[0]) if row else None

    async def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, for comparing a rebuilt view with the live one."""
        tables: dict[str, list[tuple[Any, ...]]] = {}
        for table, key in (
            ("sandboxes", "sandbox_id"),
            ("rejections", "key, project"),
            ("hosts", "host"),
            ("snapshots", "snapshot_id"),
            *ROUTE_TABLES,
            *ACCOUNT_TABLES,
            *KEY_TABLES,
            ("position", "projection"),
            ("meta", "key"),
        ):
            async with self._db.execute(f"SELECT * FROM {table} ORDER BY {key}") as cursor:
                tables[table] = [tuple(row) for row in await cursor.fetchall()]
        return tables
