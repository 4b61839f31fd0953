"""The first ``create_abandoned`` (a create refused after its credit hold gives its sandbox id
up) and the ``credits_released`` of that create's hold that follows it (docs/payments.md)
still decode on their subjects, keep every field, and fold to the same states
(tests/golden/README.md)."""

from __future__ import annotations

import json
from typing import Any, cast

import msgspec

from sandboxer import subjects
from sandboxer.domain.account_state import AccountState, evolve_account
from sandboxer.domain.sandbox_state import SandboxState, evolve
from sandboxer.events.codec import current_versions, decode_event
from sandboxer.events.types import (
    ACCOUNT_EVENTS,
    CreditsReleased,
    SandboxCreateAbandoned,
    SandboxEvent,
    event_type,
)
from tests.unit.test_golden_events import GOLDEN, contains

EVENTS = GOLDEN / "create-abandoned-events-2026-12-04.jsonl"
STATES = GOLDEN / "create-abandoned-states-2026-12-04.json"


def lines() -> list[dict[str, Any]]:
    return [json.loads(line) for line in EVENTS.read_text().splitlines()]


def test_every_stored_event_decodes_on_its_subject_and_keeps_every_field() -> None:
    for line in lines():
        event = decode_event(line["body"].encode())
        if isinstance(event, ACCOUNT_EVENTS):
            subject = subjects.account_event_subject(event.project, event_type(event))
        else:
            sandbox_event = cast(SandboxEvent, event)
            subject = subjects.sandbox_event_subject(sandbox_event.sandbox_id, event_type(event))
        assert line["subject"] == subject
        assert line["headers"]["Nats-Msg-Id"] == event.event_id
        body = json.loads(line["body"])
        if body["v"] == current_versions()[body["type"]]:
            assert contains(json.loads(msgspec.json.encode(event)), body), line["subject"]
    events = [decode_event(line["body"].encode()) for line in lines()]
    kinds = [type(event) for event in events]
    # The id is given up before the hold is given back.
    assert kinds.index(SandboxCreateAbandoned) < kinds.index(CreditsReleased)
    [released] = [event for event in events if isinstance(event, CreditsReleased)]
    assert (released.hold, released.amount) == ("reserve-goldenaband01", 361_000)


def test_the_account_and_the_sandbox_fold_to_the_same_states() -> None:
    accounts: dict[str, AccountState] = {}
    sandboxes: dict[str, SandboxState] = {}
    for line in lines():
        event = decode_event(line["body"].encode())
        if isinstance(event, ACCOUNT_EVENTS):
            known = accounts.get(event.project) or AccountState(project=event.project)
            accounts[event.project] = evolve_account(known, event)
        else:
            sandbox_event = cast(SandboxEvent, event)
            sandbox_id = sandbox_event.sandbox_id
            state = sandboxes.get(sandbox_id) or SandboxState(sandbox_id=sandbox_id)
            sandboxes[sandbox_id] = evolve(state, sandbox_event)
    expected = json.loads(STATES.read_text())
    folded = {
        "accounts": {k: json.loads(msgspec.json.encode(v)) for k, v in accounts.items()},
        "sandboxes": {k: json.loads(msgspec.json.encode(v)) for k, v in sandboxes.items()},
    }
    for kind in ("accounts", "sandboxes"):
        assert set(folded[kind]) == set(expected[kind])
        for key, state in folded[kind].items():
            assert contains(state, expected[kind][key])
    assert sandboxes["goldenaband01"].status == "new"  # never made
    assert accounts["goldenaband"].reserved == 0
