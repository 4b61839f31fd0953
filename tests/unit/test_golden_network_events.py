"""The first events that record a network policy still decode, keep every field and fold to
the same state (tests/golden/README.md)."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from sandboxer.config.network_policy import parse_policy
from sandboxer.domain.sandbox_state import SandboxState, evolve
from sandboxer.events.codec import current_versions, decode_event
from sandboxer.events.types import (
    NOT_SANDBOX_EVENTS,
    CommandRejected,
    SandboxReady,
    SandboxRequested,
    event_type,
)
from tests.unit.test_golden_events import GOLDEN, contains

EVENTS = GOLDEN / "network-events-2026-12-02.jsonl"
STATES = GOLDEN / "network-states-2026-12-02.json"


def lines() -> list[dict[str, Any]]:
    return [json.loads(line) for line in EVENTS.read_text().splitlines()]


def test_every_stored_event_decodes_and_keeps_every_field() -> None:
    for line in lines():
        event = decode_event(line["body"].encode())
        assert line["subject"].endswith("." + event_type(event))
        body = json.loads(line["body"])
        if body["v"] == current_versions()[body["type"]]:
            assert contains(json.loads(msgspec.json.encode(event)), body), line["subject"]


def test_requested_and_ready_record_the_policy_in_force() -> None:
    recorded: dict[str, list[Any]] = {}
    for line in lines():
        event = decode_event(line["body"].encode())
        if isinstance(event, SandboxRequested | SandboxReady):
            assert event.network is not None
            recorded.setdefault(event.sandbox_id, []).append(msgspec.to_builtins(event.network))
    assert recorded == {
        "goldennet01": [
            {
                "default": "deny",
                "egress": ["*.pypi.org:443", "10.0.0.0/8", "files.example.org:443,8000-8100/tcp"],
            }
        ]
        * 2,
        "goldennet02": [
            {"default": "deny", "egress": ["files.example.org:443/tcp", "10.1.0.0/16:22"]}
        ]
        * 2,
        "goldennet04": [{"default": "deny", "egress": []}] * 2,
    }
    for policies in recorded.values():
        parse_policy(policies[0])  # what events record reads back as a policy


def test_the_widening_is_on_record() -> None:
    [rejected] = [
        event
        for event in (decode_event(line["body"].encode()) for line in lines())
        if isinstance(event, CommandRejected)
    ]
    assert rejected.code == "network_widened"
    assert "egress pypi.org:443 is not within the profile's network policy" in rejected.reason


def test_replay_folds_the_stored_events_to_the_same_state() -> None:
    states: dict[str, SandboxState] = {}
    for line in lines():
        event = decode_event(line["body"].encode())
        if isinstance(event, NOT_SANDBOX_EVENTS):
            continue
        state = states.get(event.sandbox_id) or SandboxState(sandbox_id=event.sandbox_id)
        states[event.sandbox_id] = evolve(state, event)
    expected = json.loads(STATES.read_text())
    assert set(states) == set(expected)
    for sandbox_id, state in states.items():
        assert contains(json.loads(msgspec.json.encode(state)), expected[sandbox_id]), sandbox_id
