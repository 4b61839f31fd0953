"""Which snapshot objects are orphans (domain/snapshot_objects.py): pure, no bus."""

from __future__ import annotations

import pytest

from sandboxer.domain.snapshot_objects import orphaned, owned_by, owner_of, to_collect
from sandboxer.domain.snapshot_state import SnapshotState, SnapshotStatus

X, Y = "sha256-" + "a" * 64, "sha256-" + "b" * 64


def snap(snapshot_id: str, status: SnapshotStatus, obj: str | None = None) -> SnapshotState:
    return SnapshotState(snapshot_id=snapshot_id, status=status, object=obj)


@pytest.mark.parametrize(
    ("owner", "expected"),
    [
        (snap("s", "new"), False),  # unknown to the log (or its requested not readable yet)
        (snap("s", "requested"), False),  # a slow or frozen job may yet record it
        (snap("s", "created", X), False),  # recorded: its data
        (snap("s", "created", Y), True),  # a later attempt's object was recorded
        (snap("s", "failed"), True),
        (snap("s", "deleted", X), True),  # kept at the delete while shared
    ],
)
def test_an_owner_is_done_with_its_object_once_it_can_no_longer_record_it(
    owner: SnapshotState, expected: bool
) -> None:
    assert orphaned(owner, X) is expected


def test_an_orphan_another_snapshot_recorded_is_kept() -> None:
    owner = snap("s", "failed")
    # A snapshot of the same tree found the object in the bucket and recorded it.
    assert to_collect([(X, "s")], [owner, snap("t", "created", X)]) == []
    # Deleted since: it holds it no more.
    assert to_collect([(X, "s")], [owner, snap("t", "deleted", X)]) == [(X, "s")]


def test_nothing_is_collected_while_any_snapshot_is_being_taken() -> None:
    """A snapshot being taken may have found the object and not stored it again: it names
    its object only when it records it."""
    owner = snap("s", "created", Y)
    assert to_collect([(X, "s")], [owner, snap("t", "requested")]) == []
    assert to_collect([(X, "s")], [owner, snap("t", "failed")]) == [(X, "s")]


def test_each_marked_object_is_judged_by_its_own_owner() -> None:
    snapshots = [snap("s", "created", X), snap("u", "failed"), snap("v", "created", Y)]
    marked = [(X, "s"), (Y, "u"), ("sha256-" + "c" * 64, "u"), (X, "gone")]
    # X is s's data; Y is v's (u's job stored it first); c is u's leftover; a mark naming a
    # snapshot the log does not hold keeps its object.
    assert to_collect(marked, snapshots) == [("sha256-" + "c" * 64, "u")]


def test_the_mark_round_trips_and_anything_else_names_no_owner() -> None:
    snapshot_id = "snpq4w6e8r0t2y4u6i8o"
    assert owner_of(owned_by(snapshot_id)) == snapshot_id
    assert owner_of({"Sandboxer-Snapshot": snapshot_id}) == snapshot_id  # a plain value too
    for headers in (
        None,
        {},
        {"Other": ["x"]},
        {"Sandboxer-Snapshot": ["a", "b"]},
        {"Sandboxer-Snapshot": [7]},
        {"Sandboxer-Snapshot": ""},
        {"Sandboxer-Snapshot": ["*"]},
        {"Sandboxer-Snapshot": ["snp.>"]},
        ["x"],
    ):
        assert owner_of(headers) is None
