"""Snapshot events stored on 2026-12-02 still decode, sit on their subjects, and fold to the
same snapshot states (see tests/golden/README.md)."""

from __future__ import annotations

import json

from sandboxer import subjects
from sandboxer.events.types import SNAPSHOT_EVENTS, Event, SandboxRequested
from tests.unit.golden_files import (
    assert_folds_to,
    decoded,
    folded,
    stored_lines,
    stored_states,
)

EVENTS = "snapshot-events-2026-12-02.jsonl"
STATES = "snapshot-states-2026-12-02.json"
TYPES = {
    "snapshot_requested",
    "snapshot_created",
    "snapshot_failed",
    "snapshot_deleted",
    "snapshot_started",
    "snapshot_finished",
    "requested",
}


def events() -> list[Event]:
    return [decoded(line) for line in stored_lines(EVENTS)]


def test_every_line_decodes_on_its_subject_with_every_field() -> None:
    lines = stored_lines(EVENTS)
    assert {json.loads(line["body"])["type"] for line in lines} == TYPES
    for line in lines:
        event = decoded(line)
        if isinstance(event, SNAPSHOT_EVENTS):
            scope = subjects.snapshot_events_filter(event.snapshot_id)
        else:
            scope = subjects.sandbox_events_filter(event.sandbox_id)  # type: ignore[union-attr]
        assert line["headers"]["Nats-Expected-Last-Subject-Sequence-Subject"] == scope


def test_a_restore_names_its_snapshot() -> None:
    [restored] = [event for event in events() if isinstance(event, SandboxRequested)]
    assert restored.restored_from == "snpyrfjcvascs5ubpluk"


def test_the_snapshots_fold_to_the_same_states() -> None:
    assert_folds_to(folded(events())["snapshots"], stored_states(STATES))
