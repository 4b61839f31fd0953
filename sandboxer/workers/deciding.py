"""Load, decide, append: the loop every worker runs to change an aggregate.

Optimistic concurrency means a decision can lose the race to another
writer; the loop then reloads and decides again, a bounded number of times.
Workers change sandboxes only through :func:`apply`, snapshots only through
:func:`apply_snapshot`, project accounts only through :func:`apply_account`,
API keys only through :func:`apply_key` and hosts' places only through
:func:`apply_places`:
all are this one loop, :func:`_decide_loop`.

Within one process the loop takes turns per aggregate: writers of one
aggregate in the same worker (its handlers run concurrently) would otherwise
only race each other, every loser reloading the whole history again. After a
leader election released a backlog of 64 ``add_credits`` on one account at
once, most of them lost eight races in a row. Other processes still race,
and the reload handles them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

from sandboxer.bus.event_store import (
    Alongside,
    EventStore,
    Loaded,
    LoadedAccount,
    LoadedKey,
    LoadedPlaces,
    LoadedSnapshot,
)
from sandboxer.clock import utc_now
from sandboxer.domain.account_decide import AccountCommand, decide_account
from sandboxer.domain.host_places import PlaceCommand, decide_places
from sandboxer.domain.key_decide import KeyCommand, decide_key, key_id_of
from sandboxer.domain.sandbox_decide import DomainCommand, decide
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.domain.snapshot_decide import SnapshotCommand, decide_snapshot
from sandboxer.errors import ConcurrencyConflict, LogBehind, Rejected
from sandboxer.events.types import SandboxEvent

__all__ = [
    "DECIDE_ATTEMPTS",
    "apply",
    "apply_account",
    "apply_key",
    "apply_places",
    "apply_snapshot",
    "load_current",
    "sandbox_turn",
]

DECIDE_ATTEMPTS = 8
"""Reloads before giving up; each one means another writer changed the aggregate meanwhile."""

L = TypeVar("L")
E = TypeVar("E")


class _Turns:
    """One writer at a time per aggregate in this process; a lock lives while it is wanted."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def turn(self, aggregate: str) -> AsyncIterator[None]:
        lock, wanted = self._locks.get(aggregate, (asyncio.Lock(), 0))
        self._locks[aggregate] = (lock, wanted + 1)
        try:
            async with lock:
                yield
        finally:
            lock, wanted = self._locks[aggregate]
            if wanted == 1:
                del self._locks[aggregate]
            else:
                self._locks[aggregate] = (lock, wanted - 1)


_TURNS = _Turns()


def sandbox_turn(sandbox_id: str) -> contextlib.AbstractAsyncContextManager[None]:
    """This process's turn on the sandbox, as :func:`apply` takes it: for a writer that sends
    several appends to it (and beside it) before any is acknowledged
    (workers/claim_ahead.py)."""
    return _TURNS.turn(f"sandbox {sandbox_id}")


async def _decide_loop(
    what: str,
    load: Callable[[], Awaitable[L]],
    decide_on: Callable[[L], Sequence[E]],
    append: Callable[[L, Sequence[E]], Awaitable[L]],
    known: L | None = None,
    *,
    sandbox_id: str | None = None,
    on_turn: Callable[[], object] | None = None,
) -> tuple[L, bool]:
    async with _TURNS.turn(what):
        if on_turn is not None:
            on_turn()
        return await _attempts(what, load, decide_on, append, known, sandbox_id=sandbox_id)


async def _attempts(
    what: str,
    load: Callable[[], Awaitable[L]],
    decide_on: Callable[[L], Sequence[E]],
    append: Callable[[L, Sequence[E]], Awaitable[L]],
    known: L | None,
    *,
    sandbox_id: str | None,
) -> tuple[L, bool]:
    for _ in range(DECIDE_ATTEMPTS):
        trusted = known is None
        loaded = known if known is not None else await load()
        known = None
        try:
            events = decide_on(loaded)
        except Rejected:
            if trusted:
                raise
            continue  # refused on a state that may be stale: check the log itself
        if not events and not trusted:
            continue  # "nothing to do" from a state that may be stale: check the log itself
        if not events:
            return loaded, False
        try:
            return await append(loaded, events), True
        except ConcurrencyConflict:
            continue
    raise ConcurrencyConflict(
        f"{what} kept changing; gave up after {DECIDE_ATTEMPTS} attempts", sandbox_id=sandbox_id
    )


async def apply(
    store: EventStore,
    sandbox_id: str,
    command: DomainCommand,
    known: Loaded | None = None,
    *,
    only_if: Callable[[SandboxState], bool] | None = None,
    at_least: int = 0,
    alongside: Alongside | None = None,
    on_turn: Callable[[], object] | None = None,
) -> tuple[Loaded, bool]:
    """Load, decide, append (reloading on conflicts). Returns the state and whether it changed.

    ``known`` is a state the caller just loaded or appended: it is tried first,
    which saves a round trip; a conflict means it was stale, and the loop
    reloads (as it does when the known state decides nothing or is refused,
    which a stale state could be). ``Rejected`` from ``decide`` on a state
    read from the log propagates to the caller.

    ``only_if``: the command is decided only on a state it holds for, checked on each state
    the loop decides on, so that it holds for the state the append follows (the append is
    refused should the log have moved on since); on one it does not hold for, nothing is
    appended.

    ``at_least``: the version the work in hand was made from (a job's). A read of the log
    that finds less raises :class:`~sandboxer.errors.LogBehind` rather than decide on it: a
    replica still catching up, or a create's events sent with its job and not stored yet
    (or refused). ``alongside``: a message the store may send with what is decided
    (:class:`~sandboxer.bus.event_store.Alongside`). ``on_turn``: called once this process's
    other writers of the sandbox are done (its turn, below), right before the first append
    is sent: what starts then goes out after it on the connection.
    """

    def decide_on(loaded: Loaded) -> list[SandboxEvent]:
        if only_if is not None and not only_if(loaded.state):
            return []
        return decide(loaded.state, command, utc_now())

    return await _decide_loop(
        f"sandbox {sandbox_id}",
        lambda: load_current(store, sandbox_id, at_least),
        decide_on,
        store.append if alongside is None else functools.partial(store.append, alongside=alongside),
        known,
        sandbox_id=sandbox_id,
        on_turn=on_turn,
    )


async def load_current(store: EventStore, sandbox_id: str, at_least: int = 0) -> Loaded:
    """The sandbox as the log holds it; :class:`~sandboxer.errors.LogBehind` when that is
    less than version ``at_least``, the version the work in hand was made from: a replica
    still catching up answered, or a create's events sent with its job are not stored yet
    (or were refused). Waited out, not decided on: a job acked on a state short of the one
    that made it is lost."""
    loaded = await store.load(sandbox_id)
    if loaded.state.version < at_least:
        raise LogBehind(
            f"sandbox {sandbox_id}: the log read is behind the work in hand "
            f"(version {loaded.state.version} < {at_least})",
            state=loaded.state,
            sandbox_id=sandbox_id,
        )
    return loaded


async def apply_snapshot(
    store: EventStore, snapshot_id: str, command: SnapshotCommand
) -> tuple[LoadedSnapshot, bool]:
    """The same loop on a snapshot's own history. ``Rejected`` propagates to the caller."""
    return await _decide_loop(
        f"snapshot {snapshot_id}",
        lambda: store.load_snapshot(snapshot_id),
        lambda loaded: decide_snapshot(loaded.state, command, utc_now()),
        store.append_snapshot,
    )


async def apply_account(
    store: EventStore, project: str, command: AccountCommand, known: LoadedAccount | None = None
) -> tuple[LoadedAccount, bool]:
    """The same loop on a project's account. ``Rejected`` propagates to the caller."""
    return await _decide_loop(
        f"account {project}",
        lambda: store.load_account(project),
        lambda loaded: decide_account(loaded.book, command, utc_now()),
        store.append_account,
        known,
    )


async def apply_key(store: EventStore, command: KeyCommand) -> tuple[LoadedKey, bool]:
    """The same loop on an API key's history. ``Rejected`` propagates to the caller."""
    key_id = key_id_of(command)
    return await _decide_loop(
        f"key {key_id}",
        lambda: store.load_key(key_id),
        lambda loaded: decide_key(loaded.state, command, utc_now()),
        store.append_key,
    )


async def apply_places(
    store: EventStore, host: str, command: PlaceCommand, known: LoadedPlaces | None = None
) -> tuple[LoadedPlaces, bool]:
    """The same loop on a host's places. ``Rejected`` (``host_full``) propagates."""
    return await _decide_loop(
        f"host {host}",
        lambda: store.load_places(host),
        lambda loaded: decide_places(loaded.state, command, utc_now()),
        store.append_places,
        known,
    )
