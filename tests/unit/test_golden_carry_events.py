"""The first ``credits_reserved`` of a reroute that carries over an in-flight extension's hold
(its optional ``carried``; docs/payments.md#fallback) still decodes on its subject, keeps
every field, and the account folds to the same state (tests/golden/README.md)."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from sandboxer import subjects
from sandboxer.domain.account_state import AccountState, evolve_account
from sandboxer.events.codec import current_versions, decode_event
from sandboxer.events.types import ACCOUNT_EVENTS, CreditsReserved, event_type
from tests.unit.test_golden_events import GOLDEN, contains

EVENTS = GOLDEN / "reroute-carried-events-2026-12-04.jsonl"
STATES = GOLDEN / "reroute-carried-states-2026-12-04.json"


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
    [reroute] = [
        event
        for event in (decode_event(line["body"].encode()) for line in lines())
        if isinstance(event, CreditsReserved) and event.reason == "reroute"
    ]
    # The 10-minute TTL at ext.local's 50 a second, and the in-flight hour carried over.
    assert list(reroute.carried.values()) == [50 * 3600]
    assert reroute.amount == 50 * 600 + 50 * 3600


def test_the_account_folds_to_the_same_state() -> None:
    states: dict[str, AccountState] = {}
    for line in lines():
        event = decode_event(line["body"].encode())
        assert isinstance(event, ACCOUNT_EVENTS)
        known = states.get(event.project) or AccountState(project=event.project)
        states[event.project] = evolve_account(known, event)
        if isinstance(event, CreditsReserved) and event.reason == "reroute":
            held = states[event.project].reservations[event.sandbox_id]
            assert held.extensions == event.carried
    expected = json.loads(STATES.read_text())
    assert set(states) == set(expected)
    for project, state in states.items():
        assert contains(json.loads(msgspec.json.encode(state)), expected[project])
