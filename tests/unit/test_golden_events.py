"""Events stored on 2026-12-02 still decode and fold to the same state (see tests/golden/)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sandboxer.domain.sandbox_state import SandboxState, evolve
from sandboxer.events.codec import Codec, UnknownEventType, current_versions, decode_event
from sandboxer.events.types import NOT_SANDBOX_EVENTS, SandboxRequested
from tests.unit.golden_files import as_json, contains, decoded, stored_lines, stored_states

TYPES_OF_2026_12_02 = {
    "requested",
    "routed",
    "provisioning",
    "ready",
    "failed",
    "recreating",
    "destroying",
    "destroyed",
    "rejected",
    "inspected",
    "reaped",
}


def golden_lines() -> list[dict[str, Any]]:
    return stored_lines("events-2026-12-02.jsonl")


def test_every_type_of_that_day_is_in_the_file() -> None:
    stored = {json.loads(line["body"])["type"] for line in golden_lines()}
    assert stored == TYPES_OF_2026_12_02
    assert set(current_versions()) >= TYPES_OF_2026_12_02


def test_every_stored_event_decodes_and_keeps_every_field() -> None:
    for line in golden_lines():
        decoded(line)


def test_replay_folds_the_stored_events_to_the_same_state() -> None:
    states: dict[str, SandboxState] = {}
    for line in golden_lines():
        event = decode_event(line["body"].encode())
        if isinstance(event, NOT_SANDBOX_EVENTS):
            continue
        state = states.get(event.sandbox_id) or SandboxState(sandbox_id=event.sandbox_id)
        states[event.sandbox_id] = evolve(state, event)
    expected = stored_states("states-2026-12-02.json")
    assert set(states) == set(expected)
    for sandbox_id, state in states.items():
        assert contains(as_json(state), expected[sandbox_id]), sandbox_id


def test_an_old_version_of_a_type_is_upcast_on_decode() -> None:
    """With ``requested`` at v2, the stored v1 passes through the registered step first."""
    steps: list[int] = []

    def v1_to_v2(body: dict[str, Any]) -> dict[str, Any]:
        steps.append(body["v"])
        return {**body, "inputs": {**body["inputs"], "upgraded": "from-v1"}}

    codec = Codec(
        upcasters={("requested", 1): v1_to_v2}, versions={**current_versions(), "requested": 2}
    )
    stored = next(line for line in golden_lines() if line["subject"].endswith(".requested"))
    event = codec.decode(stored["body"].encode())
    assert isinstance(event, SandboxRequested)
    assert event.v == 2
    assert event.inputs["upgraded"] == "from-v1"
    assert steps == [1]
    assert codec.decode(codec.encode(event)) == event  # the current version takes the fast path
    assert steps == [1]


def test_a_missing_upcaster_is_an_error_naming_the_step() -> None:
    codec = Codec(upcasters={}, versions={**current_versions(), "routed": 3})
    stored = next(line for line in golden_lines() if line["subject"].endswith(".routed"))
    with pytest.raises(Exception, match="no upcaster from routed v1 to v2"):
        codec.decode(stored["body"].encode())


def test_newer_versions_and_fields_are_read_as_far_as_known() -> None:
    stored = json.loads(
        next(line["body"] for line in golden_lines() if line["subject"].endswith(".ready"))
    )
    newer = {
        **stored,
        "v": 7,
        "brand_new": {"x": 1},
        "actor": {**stored["actor"], "department": "ops"},
    }
    event = decode_event(json.dumps(newer).encode())
    assert event.v == 7
    assert event.actor is not None
    assert event.actor.id == stored["actor"]["id"]


def test_an_unknown_type_is_named() -> None:
    with pytest.raises(UnknownEventType, match="snapshot_taken"):
        decode_event(b'{"type": "snapshot_taken", "v": 1, "sandbox_id": "x"}')
