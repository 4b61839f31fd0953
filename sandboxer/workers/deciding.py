"""Load, decide, append: the loop every worker runs to change a sandbox.

Optimistic concurrency means a decision can lose the race to another
writer; the loop then reloads and decides again, a bounded number of times.
The control worker and the extension workers both change sandboxes only
through :func:`apply`.
"""

from __future__ import annotations

from sandboxer.bus.event_store import EventStore, Loaded
from sandboxer.clock import utc_now
from sandboxer.domain.sandbox_decide import DomainCommand, decide
from sandboxer.errors import ConcurrencyConflict

__all__ = ["DECIDE_ATTEMPTS", "apply"]

DECIDE_ATTEMPTS = 8
"""Reloads before giving up; each one means another writer changed the sandbox meanwhile."""


async def apply(
    store: EventStore, sandbox_id: str, command: DomainCommand, known: Loaded | None = None
) -> tuple[Loaded, bool]:
    """Load, decide, append (reloading on conflicts). Returns the state and whether it changed.

    ``known`` is a state the caller just loaded or appended: it is tried first,
    which saves a round trip; a conflict means it was stale, and the loop
    reloads (as it does when the known state decides nothing, which a stale
    state could). ``Rejected`` from ``decide`` propagates to the caller.
    """
    for _ in range(DECIDE_ATTEMPTS):
        trusted = known is None
        loaded = known or await store.load(sandbox_id)
        known = None
        events = decide(loaded.state, command, utc_now())
        if not events and not trusted:
            continue  # "nothing to do" from a state that may be stale: check the log itself
        if not events:
            return loaded, False
        try:
            return await store.append(loaded, events), True
        except ConcurrencyConflict:
            continue
    raise ConcurrencyConflict(
        f"sandbox {sandbox_id} kept changing; gave up after {DECIDE_ATTEMPTS} attempts",
        sandbox_id=sandbox_id,
    )
