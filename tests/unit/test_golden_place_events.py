"""The first host place events (``place_taken``, ``place_freed``; docs/routing.md#capacity)
still decode on their subjects, keep every field, and fold to the same places
(tests/golden/README.md)."""

from __future__ import annotations

from sandboxer.domain.host_places import HostPlaces, evolve_places
from sandboxer.events.types import PLACE_EVENTS, Event, PlaceFreed, PlaceTaken
from tests.unit.golden_files import as_json, assert_folds_to, decoded_all, stored_states

EVENTS = "host-place-events-2026-12-04.jsonl"
STATES = "host-place-states-2026-12-04.json"


def events() -> list[Event]:
    """Every stored event, each decoding on its subject with every field."""
    return decoded_all(EVENTS)


def test_every_stored_event_decodes_on_its_subject_and_keeps_every_field() -> None:
    stored = events()
    assert [type(event) for event in stored] == [PlaceTaken, PlaceFreed, PlaceTaken]
    taken, freed, again = stored
    assert isinstance(taken, PlaceTaken)
    assert isinstance(freed, PlaceFreed)
    assert freed.sandbox_id == taken.sandbox_id
    assert freed.reason == "the sandbox is destroyed"
    assert isinstance(again, PlaceTaken)
    assert again.limit == 1


def test_the_places_fold_to_the_same_state() -> None:
    hosts: dict[str, HostPlaces] = {}
    for event in events():
        assert isinstance(event, PLACE_EVENTS)
        hosts[event.host] = evolve_places(hosts.get(event.host) or HostPlaces(event.host), event)
    assert_folds_to(
        {host: as_json(state) for host, state in hosts.items()}, stored_states(STATES)["hosts"]
    )
