"""The first ``credits_released`` (an extension's hold given back when its sandbox refused it
past ``ttl.max``; docs/payments.md) still decodes on its subject, keeps every field, and the
account's events fold to the same state (tests/golden/README.md)."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from sandboxer import subjects
from sandboxer.domain.account_state import AccountState, evolve_account
from sandboxer.events.codec import current_versions, decode_event
from sandboxer.events.types import ACCOUNT_EVENTS, CreditsReleased, event_type
from tests.unit.test_golden_events import GOLDEN, contains

EVENTS = GOLDEN / "credits-released-events-2026-12-04.jsonl"
STATES = GOLDEN / "credits-released-states-2026-12-04.json"


def lines() -> list[dict[str, Any]]:
    return [json.loads(line) for line in EVENTS.read_text().splitlines()]


def test_every_stored_event_decodes_on_its_subject_and_keeps_every_field() -> None:
    for line in lines():
        event = decode_event(line["body"].encode())
        assert isinstance(event, ACCOUNT_EVENTS)
        assert line["subject"] == subjects.account_event_subject(event.project, event_type(event))
        assert line["headers"]["Nats-Msg-Id"] == event.event_id
        body = json.loads(line["body"])
        if body["v"] == current_versions()[body["type"]]:
            assert contains(json.loads(msgspec.json.encode(event)), body), line["subject"]
    [released] = [
        event
        for event in (decode_event(line["body"].encode()) for line in lines())
        if isinstance(event, CreditsReleased)
    ]
    assert (released.amount, released.reason) == (720_000, "ttl_max_exceeded")


def test_the_account_folds_to_the_same_state() -> None:
    states: dict[str, AccountState] = {}
    for line in lines():
        event = decode_event(line["body"].encode())
        assert isinstance(event, ACCOUNT_EVENTS)
        known = states.get(event.project) or AccountState(project=event.project)
        states[event.project] = evolve_account(known, event)
        if isinstance(event, CreditsReleased):
            # The refused extension's hold is given back; the create's and the other's stay.
            assert states[event.project].reserved == 361_000 + 720_000
    expected = json.loads(STATES.read_text())
    assert set(states) == set(expected)
    for project, state in states.items():
        assert contains(json.loads(msgspec.json.encode(state)), expected[project])
