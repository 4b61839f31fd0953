"""The first ``credits_reserved`` of a reroute that carries over an in-flight extension's hold
(its optional ``carried``; docs/payments.md#fallback) still decodes on its subject, keeps
every field, and the account folds to the same state (tests/golden/README.md)."""

from __future__ import annotations

from sandboxer.domain.account_state import AccountState, evolve_account
from sandboxer.events.types import ACCOUNT_EVENTS, CreditsReserved, Event
from tests.unit.golden_files import assert_folds_to, decoded_all, folded, stored_states

EVENTS = "reroute-carried-events-2026-12-04.jsonl"
STATES = "reroute-carried-states-2026-12-04.json"


def events() -> list[Event]:
    """Every stored event, each decoding on its subject with every field."""
    return decoded_all(EVENTS)


def test_every_stored_event_decodes_on_its_subject_and_keeps_every_field() -> None:
    stored = events()
    assert all(isinstance(event, ACCOUNT_EVENTS) for event in stored)
    [reroute] = [
        event
        for event in stored
        if isinstance(event, CreditsReserved) and event.reason == "reroute"
    ]
    # The 10-minute TTL at ext.local's 50 a second, and the in-flight hour carried over.
    assert list(reroute.carried.values()) == [50 * 3600]
    assert reroute.amount == 50 * 600 + 50 * 3600


def test_the_account_folds_to_the_same_state() -> None:
    states: dict[str, AccountState] = {}
    for event in events():
        assert isinstance(event, ACCOUNT_EVENTS)
        known = states.get(event.project) or AccountState(project=event.project)
        states[event.project] = evolve_account(known, event)
        if isinstance(event, CreditsReserved) and event.reason == "reroute":
            held = states[event.project].reservations[event.sandbox_id]
            assert held.extensions == event.carried
    assert_folds_to(folded(events())["accounts"], stored_states(STATES))
