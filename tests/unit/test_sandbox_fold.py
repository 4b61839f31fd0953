"""``fold_on`` folds a sandbox's events as ``evolve`` does, one after another."""

from __future__ import annotations

import functools
from typing import Any

from hypothesis import given, settings, strategies

from sandboxer.domain.sandbox_state import SandboxState, evolve, fold_on
from sandboxer.events.types import (
    Actor,
    SandboxActive,
    SandboxDestroyed,
    SandboxDestroying,
    SandboxEvent,
    SandboxExpired,
    SandboxFailed,
    SandboxProvisioning,
    SandboxReady,
    SandboxRouted,
    SandboxSnapshotFinished,
    SandboxSnapshotStarted,
    SandboxTouched,
    SandboxTtlExtended,
)

SID = "fold0000001"
ACTOR = Actor(type="agt", id="a")
T0 = "2026-12-03T08:00:00.000Z"

KINDS: dict[str, tuple[type[Any], dict[str, Any]]] = {
    "routed": (SandboxRouted, {"extension": "ext.local", "reason": "fixed"}),
    "provisioning": (SandboxProvisioning, {"extension": "ext.local"}),
    "ready": (SandboxReady, {"reachability": {"kind": "local"}}),
    "active": (SandboxActive, {}),
    "touched": (SandboxTouched, {}),
    "ttl_extended": (
        SandboxTtlExtended,
        {"expires_at": "2026-12-04T00:00:00.000Z", "by_seconds": 60},
    ),
    "snapshot_started": (SandboxSnapshotStarted, {"snapshot_id": "snap0001"}),
    "snapshot_finished": (SandboxSnapshotFinished, {"snapshot_id": "snap0001", "outcome": "ok"}),
    "failed": (SandboxFailed, {"reason": "gone", "stage": "provision"}),
    "expired": (SandboxExpired, {"cause": "ttl"}),
    "destroying": (SandboxDestroying, {}),
    "destroyed": (SandboxDestroyed, {}),
}


def event(kind: str, command_id: str, second: int) -> SandboxEvent:
    cls, fields = KINDS[kind]
    at = f"2026-12-03T08:{second // 60 % 60:02d}:{second % 60:02d}.000Z"
    made: SandboxEvent = cls(sandbox_id=SID, command_id=command_id, actor=ACTOR, at=at, **fields)
    return made


EVENTS = strategies.lists(
    strategies.tuples(
        strategies.sampled_from(sorted(KINDS)),
        strategies.sampled_from([f"cmd{n}" for n in range(8)]),  # ids repeat, as commands' do
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(before=EVENTS, after=EVENTS)
def test_fold_on_is_folding_evolve(
    before: list[tuple[str, str]], after: list[tuple[str, str]]
) -> None:
    """From any state (one with decided ids already, too) and through any events."""
    start = functools.reduce(
        evolve, [event(k, c, n) for n, (k, c) in enumerate(before)], SandboxState(sandbox_id=SID)
    )
    events = [event(k, c, len(before) + n) for n, (k, c) in enumerate(after)]
    assert fold_on(start, events) == functools.reduce(evolve, events, start)
    assert fold_on(start, []) is start
