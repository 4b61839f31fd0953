"""The first ``credits_released`` (an extension's hold given back when its sandbox refused it
past ``ttl.max``; docs/payments.md) still decodes on its subject, keeps every field, and the
account's events fold to the same state (tests/golden/README.md)."""

from __future__ import annotations

from sandboxer.domain.account_state import AccountState, evolve_account
from sandboxer.events.types import ACCOUNT_EVENTS, CreditsReleased, Event
from tests.unit.golden_files import assert_folds_to, decoded_all, folded, stored_states

EVENTS = "credits-released-events-2026-12-04.jsonl"
STATES = "credits-released-states-2026-12-04.json"


def events() -> list[Event]:
    """Every stored event, each decoding on its subject with every field."""
    return decoded_all(EVENTS)


def test_every_stored_event_decodes_on_its_subject_and_keeps_every_field() -> None:
    stored = events()
    assert all(isinstance(event, ACCOUNT_EVENTS) for event in stored)
    [released] = [event for event in stored if isinstance(event, CreditsReleased)]
    assert (released.amount, released.reason) == (720_000, "ttl_max_exceeded")


def test_the_account_folds_to_the_same_state() -> None:
    states: dict[str, AccountState] = {}
    for event in events():
        assert isinstance(event, ACCOUNT_EVENTS)
        known = states.get(event.project) or AccountState(project=event.project)
        states[event.project] = evolve_account(known, event)
        if isinstance(event, CreditsReleased):
            # The refused extension's hold is given back; the create's and the other's stay.
            assert states[event.project].reserved == 361_000 + 720_000
    assert_folds_to(folded(events())["accounts"], stored_states(STATES))
