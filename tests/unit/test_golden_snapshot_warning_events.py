"""The first ``snapshot_created`` that records what its copy left out (``warnings``) still
decodes, keeps every field and folds to the same state (tests/golden/README.md)."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from sandboxer import subjects
from sandboxer.domain.snapshot_state import SnapshotState, evolve_snapshot
from sandboxer.events.codec import current_versions, decode_event
from sandboxer.events.types import SNAPSHOT_EVENTS, SnapshotCreated, event_type
from tests.unit.test_golden_events import GOLDEN, contains

EVENTS = GOLDEN / "snapshot-warnings-events-2026-12-03.jsonl"
STATES = GOLDEN / "snapshot-warnings-states-2026-12-03.json"
WARNINGS = ("left out 2 FIFOs: run/a.fifo, run/b.fifo", "left out 1 socket: agent.sock")


def lines() -> list[dict[str, Any]]:
    return [json.loads(line) for line in EVENTS.read_text().splitlines()]


def test_every_stored_event_decodes_on_its_subject_and_keeps_every_field() -> None:
    for line in lines():
        event = decode_event(line["body"].encode())
        assert isinstance(event, SNAPSHOT_EVENTS)
        assert line["subject"] == subjects.snapshot_event_subject(
            event.snapshot_id, event_type(event)
        )
        body = json.loads(line["body"])
        if body["v"] == current_versions()[body["type"]]:
            assert contains(json.loads(msgspec.json.encode(event)), body), line["subject"]
    [created] = [
        event
        for event in (decode_event(line["body"].encode()) for line in lines())
        if isinstance(event, SnapshotCreated)
    ]
    assert created.warnings == WARNINGS


def test_the_snapshot_folds_to_the_same_state_with_its_warnings() -> None:
    states: dict[str, SnapshotState] = {}
    for line in lines():
        event = decode_event(line["body"].encode())
        assert isinstance(event, SNAPSHOT_EVENTS)
        known = states.get(event.snapshot_id) or SnapshotState(snapshot_id=event.snapshot_id)
        states[event.snapshot_id] = evolve_snapshot(known, event)
    expected = json.loads(STATES.read_text())
    assert set(states) == set(expected)
    for snapshot_id, state in states.items():
        assert contains(json.loads(msgspec.json.encode(state)), expected[snapshot_id])
        assert state.warnings == WARNINGS
