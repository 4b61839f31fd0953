"""Snapshot events stored on 2026-12-02 still decode, sit on their subjects, and fold to the
same snapshot states (see tests/golden/README.md)."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from sandboxer import subjects
from sandboxer.domain.snapshot_state import SnapshotState, evolve_snapshot
from sandboxer.events.codec import current_versions, decode_event
from sandboxer.events.types import SNAPSHOT_EVENTS, SandboxRequested, event_type
from tests.unit.test_golden_events import GOLDEN, contains

TYPES = {
    "snapshot_requested",
    "snapshot_created",
    "snapshot_failed",
    "snapshot_deleted",
    "snapshot_started",
    "snapshot_finished",
    "requested",
}


def lines() -> list[dict[str, Any]]:
    text = (GOLDEN / "snapshot-events-2026-12-02.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_every_line_decodes_on_its_subject_with_every_field() -> None:
    assert {json.loads(line["body"])["type"] for line in lines()} == TYPES
    for line in lines():
        event = decode_event(line["body"].encode())
        assert line["headers"]["Nats-Msg-Id"] == event.event_id
        body = json.loads(line["body"])
        if isinstance(event, SNAPSHOT_EVENTS):
            assert line["subject"] == subjects.snapshot_event_subject(
                event.snapshot_id, event_type(event)
            )
            scope = subjects.snapshot_events_filter(event.snapshot_id)
        else:
            assert line["subject"] == subjects.sandbox_event_subject(
                event.sandbox_id, event_type(event)
            )
            scope = subjects.sandbox_events_filter(event.sandbox_id)
        assert line["headers"]["Nats-Expected-Last-Subject-Sequence-Subject"] == scope
        if body["v"] == current_versions()[body["type"]]:
            assert contains(json.loads(msgspec.json.encode(event)), body), line["subject"]


def test_a_restore_names_its_snapshot() -> None:
    [restored] = [
        event
        for event in (decode_event(line["body"].encode()) for line in lines())
        if isinstance(event, SandboxRequested)
    ]
    assert restored.restored_from == "snpyrfjcvascs5ubpluk"


def test_the_snapshots_fold_to_the_same_states() -> None:
    states: dict[str, SnapshotState] = {}
    for line in lines():
        event = decode_event(line["body"].encode())
        if isinstance(event, SNAPSHOT_EVENTS):
            known = states.get(event.snapshot_id) or SnapshotState(snapshot_id=event.snapshot_id)
            states[event.snapshot_id] = evolve_snapshot(known, event)
    expected = json.loads((GOLDEN / "snapshot-states-2026-12-02.json").read_text())
    assert set(states) == set(expected)
    for snapshot_id, state in states.items():
        assert contains(json.loads(msgspec.json.encode(state)), expected[snapshot_id])
