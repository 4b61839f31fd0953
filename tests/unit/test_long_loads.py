"""A long history's load lets the rest of its process run (bus/aggregates.py, FOLD_CHUNK).

Every role of ``sandboxer up`` shares one event loop. A fresh load of an account of a
million events folds for seconds; folded in one go it held every other role that long,
past the commands' ack wait (their messages then went to another worker as if this one had
died). It now folds a chunk at a time and lets the loop run in between, to the same state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from sandboxer.bus import aggregates
from sandboxer.bus.memory_store import MemoryEventStore
from sandboxer.clock import utc_now
from sandboxer.events.account_events import CreditsAdded, CreditsReserved
from sandboxer.events.types import Actor

ACTOR = Actor(type="atm", id="test")
CHUNK = 40  # FOLD_CHUNK's 5,000 as a smaller number: the memory store appends slowly
HOLDS = 3 * CHUNK + 17


@contextlib.asynccontextmanager
async def loop_turns() -> AsyncIterator[list[int]]:
    """How many times the event loop ran something else while the block ran (one count)."""
    turns = [0]

    async def ticker() -> None:
        while True:
            turns[0] += 1
            await asyncio.sleep(0)

    beside = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)
    turns[0] = 0
    try:
        yield turns
    finally:
        beside.cancel()


async def test_a_long_account_loads_to_the_same_state_and_lets_the_loop_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(aggregates, "FOLD_CHUNK", CHUNK)
    store = MemoryEventStore()
    head = {"project": "acme", "actor": ACTOR, "at": utc_now()}
    events = [CreditsAdded(**head, command_id="add", amount=10**12)]
    events += [
        CreditsReserved(
            **head,
            command_id=f"reserve-sbxlong{n:08d}",
            sandbox_id=f"sbxlong{n:08d}",
            amount=1,
            price="1",
            extension="ext.e2b",
        )
        for n in range(HOLDS)
    ]
    appended = await store.append_account(await store.load_account("acme"), events)

    async with loop_turns() as turns:
        loaded = await store.load_account("acme")  # this store keeps no state: from seq 1
    assert loaded == appended
    assert len(loaded.state.reservations) == HOLDS
    assert turns[0] >= 3  # once after each whole chunk: the loop ran during the load


async def test_a_checkpoint_s_ids_go_back_into_their_map_letting_the_loop_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An account's checkpoint holds every command id it decided (a million, for a long
    one): putting them back into the book's map takes about a second, so it lets the rest
    of the process run every ``MAP_CHUNK`` of them (bus/checkpoints.py)."""
    from sandboxer.bus import checkpoints

    monkeypatch.setattr(checkpoints, "MAP_CHUNK", CHUNK)
    ids = [f"meter-sbxlong{n:08d}" for n in range(HOLDS)]
    async with loop_turns() as turns:
        handled = await checkpoints.handled_map(ids)
    assert sorted(handled) == ids
    assert turns[0] >= 3  # once after each whole chunk
