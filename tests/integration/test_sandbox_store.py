"""The sandbox aggregate on JetStream: a store folds only what came after the state it kept.

An active sandbox gains a ``touched`` event a minute, and every command on it (an exec
included) loads it, so each load reads on from the last state this store saw of it. What
it returns must be what a fold from sequence 1 gives, whoever appended meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.clock import utc_now
from sandboxer.events.types import Actor, SandboxTouched

pytestmark = pytest.mark.integration

SID = "kept00000001"
ACTOR = Actor(type="agt", id="pytest")


def touched(n: int) -> SandboxTouched:
    return SandboxTouched(sandbox_id=SID, command_id=f"touch-{n}", actor=ACTOR, at=utc_now())


async def test_a_sandbox_loads_from_the_state_the_store_kept_and_equals_a_full_fold(
    new_store: Callable[[], JetStreamEventStore], read_starts: list[int]
) -> None:
    worker, other = new_store(), new_store()
    loaded = await worker.load(SID)
    for n in range(5):
        loaded = await worker.append(loaded, [touched(n)])
    read_starts.clear()
    kept = await worker.load(SID)
    assert kept == loaded
    assert read_starts == [loaded.last_seq + 1]  # not sequence 1

    # Another writer (another process's store) appends; this store reads on from the state
    # it kept, and sees it.
    await other.append(await other.load(SID), [touched(5)])
    read_starts.clear()
    again = await worker.load(SID)
    assert read_starts == [kept.last_seq + 1]
    fresh = await new_store().load(SID)
    assert again == fresh
    assert (fresh.state.version, len(fresh.state.handled)) == (6, 6)


async def test_a_store_keeps_a_bounded_number_of_sandboxes(
    new_store: Callable[[], JetStreamEventStore],
) -> None:
    store = new_store()
    store._sandboxes.limit = 2
    for sandbox_id in ("kept00000a1", "kept00000a2", "kept00000a3", "kept00000a2"):
        await store.load(sandbox_id)
    assert list(store._sandboxes) == ["kept00000a3", "kept00000a2"]
