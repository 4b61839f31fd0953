"""The first ``snapshot_created`` that records what its copy left out (``warnings``) still
decodes, keeps every field and folds to the same state (tests/golden/README.md)."""

from __future__ import annotations

from sandboxer.events.types import SNAPSHOT_EVENTS, Event, SnapshotCreated
from tests.unit.golden_files import assert_folds_to, decoded_all, folded, stored_states

EVENTS = "snapshot-warnings-events-2026-12-03.jsonl"
STATES = "snapshot-warnings-states-2026-12-03.json"
WARNINGS = ("left out 2 FIFOs: run/a.fifo, run/b.fifo", "left out 1 socket: agent.sock")


def events() -> list[Event]:
    """Every stored event, each decoding on its subject with every field."""
    return decoded_all(EVENTS)


def test_every_stored_event_decodes_on_its_subject_and_keeps_every_field() -> None:
    assert all(isinstance(event, SNAPSHOT_EVENTS) for event in events())
    [created] = [event for event in events() if isinstance(event, SnapshotCreated)]
    assert created.warnings == WARNINGS


def test_the_snapshot_folds_to_the_same_state_with_its_warnings() -> None:
    snapshots = folded(events())["snapshots"]
    assert_folds_to(snapshots, stored_states(STATES))
    for state in snapshots.values():
        assert tuple(state["warnings"]) == WARNINGS
