"""The first warm pool events (``sandboxer.evt.pool.<member>.*``, and a ``ready`` with
``pool_member``; docs/pools.md) still decode, keep every field and fold to the same states
(tests/golden/README.md)."""

from __future__ import annotations

from sandboxer.events.types import Event, SandboxReady, event_type
from tests.unit.golden_files import assert_folds_to, decoded_all, folded, stored_states

EVENTS = "pool-events-2026-12-02.jsonl"
STATES = "pool-states-2026-12-02.json"


def events() -> list[Event]:
    """Every stored event, each decoding on its subject with every field."""
    return decoded_all(EVENTS)


def test_every_stored_event_decodes_and_keeps_every_field() -> None:
    assert events()


def test_the_claimed_member_is_the_one_ready_names() -> None:
    stored = events()
    (ready,) = [event for event in stored if isinstance(event, SandboxReady)]
    claims = [event for event in stored if event_type(event) == "pool_member_claimed"]
    assert [(c.member_id, getattr(c, "sandbox_id", None)) for c in claims] == [
        (ready.pool_member, ready.sandbox_id)
    ]


def test_replay_folds_the_stored_events_to_the_same_states() -> None:
    states = folded(events())
    expected = stored_states(STATES)
    assert_folds_to(states["members"], expected["members"])
    assert_folds_to(states["sandboxes"], expected["sandboxes"])
