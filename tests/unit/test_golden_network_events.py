"""The first events that record a network policy still decode, keep every field and fold to
the same state (tests/golden/README.md)."""

from __future__ import annotations

from typing import Any

import msgspec

from sandboxer.config.network_policy import parse_policy
from sandboxer.events.types import CommandRejected, Event, SandboxReady, SandboxRequested
from tests.unit.golden_files import assert_folds_to, decoded_all, folded, stored_states

EVENTS = "network-events-2026-12-02.jsonl"
STATES = "network-states-2026-12-02.json"


def events() -> list[Event]:
    """Every stored event, each decoding on its subject with every field."""
    return decoded_all(EVENTS)


def test_every_stored_event_decodes_and_keeps_every_field() -> None:
    assert events()


def test_requested_and_ready_record_the_policy_in_force() -> None:
    recorded: dict[str, list[Any]] = {}
    for event in events():
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
    [rejected] = [event for event in events() if isinstance(event, CommandRejected)]
    assert rejected.code == "network_widened"
    assert "egress pypi.org:443 is not within the profile's network policy" in rejected.reason


def test_replay_folds_the_stored_events_to_the_same_state() -> None:
    assert_folds_to(folded(events())["sandboxes"], stored_states(STATES))
