"""The first warm pool events (``sandboxer.evt.pool.<member>.*``, and a ``ready`` with
``pool_member``; docs/pools.md) still decode, keep every field and fold to the same states
(tests/golden/README.md)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import msgspec

from sandboxer.domain.pool_state import MemberState, evolve_member
from sandboxer.domain.sandbox_state import SandboxState, evolve
from sandboxer.events.codec import current_versions, decode_event
from sandboxer.events.types import POOL_EVENTS, SandboxReady, event_type
from tests.unit.test_golden_events import GOLDEN, contains

EVENTS = GOLDEN / "pool-events-2026-12-02.jsonl"
STATES = GOLDEN / "pool-states-2026-12-02.json"


def lines() -> list[dict[str, Any]]:
    return [json.loads(line) for line in EVENTS.read_text().splitlines()]


def test_every_stored_event_decodes_and_keeps_every_field() -> None:
    for line in lines():
        event = decode_event(line["body"].encode())
        tag = event_type(event)
        assert line["subject"].endswith("." + tag.removeprefix("pool_member_"))
        body = json.loads(line["body"])
        if body["v"] == current_versions()[body["type"]]:
            assert contains(json.loads(msgspec.json.encode(event)), body), line["subject"]


def test_the_claimed_member_is_the_one_ready_names() -> None:
    events = [decode_event(line["body"].encode()) for line in lines()]
    (ready,) = [event for event in events if isinstance(event, SandboxReady)]
    claims = [event for event in events if event_type(event) == "pool_member_claimed"]
    assert [(c.member_id, getattr(c, "sandbox_id", None)) for c in claims] == [
        (ready.pool_member, ready.sandbox_id)
    ]


def test_replay_folds_the_stored_events_to_the_same_states() -> None:
    members: dict[str, MemberState] = {}
    sandboxes: dict[str, SandboxState] = {}
    for line in lines():
        event = decode_event(line["body"].encode())
        if isinstance(event, POOL_EVENTS):
            known = members.get(event.member_id) or MemberState(member_id=event.member_id)
            members[event.member_id] = evolve_member(known, event)
        else:
            known_sandbox = sandboxes.get(event.sandbox_id) or SandboxState(
                sandbox_id=event.sandbox_id
            )
            sandboxes[event.sandbox_id] = evolve(known_sandbox, event)  # type: ignore[arg-type]
    expected = json.loads(STATES.read_text())
    assert set(members) == set(expected["members"])
    for member_id, member in members.items():
        assert contains(dataclasses.asdict(member), expected["members"][member_id]), member_id
    assert set(sandboxes) == set(expected["sandboxes"])
    for sandbox_id, state in sandboxes.items():
        assert contains(json.loads(msgspec.json.encode(state)), expected["sandboxes"][sandbox_id])
