"""The API keys table of the view: one row per key (docs/http-api.md#keys).

Kept in the sandbox view's database and written in the same transaction as
its other rows and its position, like the accounts (``account_rows.py``), so a
rebuild from the log gives the same rows as live projection. Rows hold a
key's hash, never the key; answers to queries hold neither.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiosqlite
import msgspec

from sandboxer.domain.account_state import PROJECT_RULE, is_valid_project
from sandboxer.domain.key_state import KeyState, evolve_key, is_valid_key_hash, key_id_for
from sandboxer.errors import RequestError
from sandboxer.events.key_events import KeyEvent
from sandboxer.pagination import KEYS, page_after, page_limit
from sandboxer.projections.pages import Keyset, read_page

__all__ = [
    "KEY_SCHEMA",
    "KEY_TABLES",
    "KeyRows",
    "answer_key_query",
    "key_to_dict",
    "load_key",
    "save_key_rows",
]

KEY_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    project TEXT,
    key_type TEXT,
    status TEXT NOT NULL,
    created_at TEXT,
    last_seq INTEGER NOT NULL,
    state BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS api_keys_project ON api_keys(project, created_at);
"""

KEY_TABLES = (("api_keys", "key_id"),)
"""The tables ``SandboxView.dump`` compares, with their keys."""

BY_CREATION = Keyset(KEYS, ("created_at", "key_id"))

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(KeyState).decode

LoadKey = Callable[[str], Awaitable[KeyState | None]]


class KeyRows:
    """Keys folded since the last flush."""

    def __init__(self) -> None:
        self.known: dict[str, KeyState] = {}
        self.dirty: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self.dirty)

    async def apply(self, event: KeyEvent, seq: int, load: LoadKey | None) -> None:
        """Fold one key event; ``load`` reads a state back from the view (None: a rebuild)."""
        state = self.known.get(event.key_id)
        if state is None:
            stored = None if load is None else await load(event.key_id)
            state = stored or KeyState(key_id=event.key_id)
        self.known[event.key_id] = evolve_key(state, event)
        self.dirty[event.key_id] = seq

    def take(self) -> KeyRows:
        """The rows changed since the last take, handed over to be written (the known states
        stay; the changes start again empty)."""
        taken = KeyRows()
        taken.dirty, self.dirty = self.dirty, {}
        taken.known = {k: self.known[k] for k in taken.dirty}
        return taken


async def save_key_rows(db: aiosqlite.Connection, rows: KeyRows) -> None:
    """Write the changed rows (the caller commits, with the position)."""
    await db.executemany(
        "INSERT OR REPLACE INTO api_keys VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (s.key_id, s.project, s.key_type, s.status, s.created_at, seq, _encode(s))
            for s, seq in ((rows.known[k], seq) for k, seq in rows.dirty.items())
        ],
    )


async def load_key(db: aiosqlite.Connection, key_id: str) -> KeyState | None:
    async with db.execute("SELECT state FROM api_keys WHERE key_id = ?", (key_id,)) as cursor:
        row = await cursor.fetchone()
    return _decode(row[0]) if row else None


def key_to_dict(state: KeyState) -> dict[str, Any]:
    """What a query answers about a key: everything but its hash."""
    return {
        "key_id": state.key_id,
        "status": state.status,
        "project": state.project,
        "type": state.key_type,
        "name": state.name,
        "max_live": state.max_live,
        "rate_per_second": state.rate_per_second,
        "created_at": state.created_at,
        "created_by": None if state.created_by is None else msgspec.to_builtins(state.created_by),
        "revoked_at": state.revoked_at,
    }


async def answer_key_query(
    kind: str, db: aiosqlite.Connection, request: dict[str, Any]
) -> dict[str, Any]:
    """``key.get`` (by ``key_hash``) and ``key.list`` (``project``, ``include_revoked``,
    ``after``, ``limit``); docs/protocol.md#queries."""
    if kind == "key.get":
        key_hash = request.get("key_hash")
        if not is_valid_key_hash(key_hash):
            raise RequestError("field 'key_hash' must be 64 lowercase hex digits")
        assert isinstance(key_hash, str)
        state = await load_key(db, key_id_for(key_hash))
        found = state is not None and state.key_hash == key_hash
        return {"key": key_to_dict(state) if found and state is not None else None}
    project = request.get("project")
    if project is not None and not is_valid_project(project):
        raise RequestError(f"invalid project: use {PROJECT_RULE}")
    include_revoked = request.get("include_revoked", False)
    if not isinstance(include_revoked, bool):
        raise RequestError("field 'include_revoked' must be a bool")
    limit = page_limit(request)
    clauses, params = [], []
    if project is not None:
        clauses.append("project = ?")
        params.append(project)
    if not include_revoked:
        clauses.append("status = 'active'")
    page = await read_page(
        db,
        fields="state",
        source="api_keys",
        keyset=BY_CREATION,
        clauses=clauses,
        params=params,
        after=page_after(request),
        limit=limit,
    )
    return {"keys": [key_to_dict(_decode(row[0])) for row in page], "next": page.next}
