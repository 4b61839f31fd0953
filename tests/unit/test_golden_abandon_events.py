"""The first ``create_abandoned`` (a create refused after its credit hold gives its sandbox id
up) and the ``credits_released`` of that create's hold that follows it (docs/payments.md)
still decode on their subjects, keep every field, and fold to the same states
(tests/golden/README.md)."""

from __future__ import annotations

from sandboxer.events.types import CreditsReleased, Event, SandboxCreateAbandoned
from tests.unit.golden_files import assert_folds_to, decoded_all, folded, stored_states

EVENTS = "create-abandoned-events-2026-12-04.jsonl"
STATES = "create-abandoned-states-2026-12-04.json"


def events() -> list[Event]:
    """Every stored event, each decoding on its subject with every field."""
    return decoded_all(EVENTS)


def test_every_stored_event_decodes_on_its_subject_and_keeps_every_field() -> None:
    stored = events()
    kinds = [type(event) for event in stored]
    # The id is given up before the hold is given back.
    assert kinds.index(SandboxCreateAbandoned) < kinds.index(CreditsReleased)
    [released] = [event for event in stored if isinstance(event, CreditsReleased)]
    assert (released.hold, released.amount) == ("reserve-goldenaband01", 361_000)


def test_the_account_and_the_sandbox_fold_to_the_same_states() -> None:
    states = folded(events())
    expected = stored_states(STATES)
    assert_folds_to(states["accounts"], expected["accounts"])
    assert_folds_to(states["sandboxes"], expected["sandboxes"])
    assert states["sandboxes"]["goldenaband01"]["status"] == "new"  # never made
    assert states["accounts"]["goldenaband"]["reserved"] == 0
