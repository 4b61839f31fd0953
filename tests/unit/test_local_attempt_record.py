"""Which provisioning made an ext.local sandbox (docs/ext-local.md, "One step at a time"): the
record's rules (pure), what the listing says of it and how the drift then judges a sandbox,
and a teardown of an earlier provisioning that leaves a later one's sandbox, over real
files in a temporary directory (no process is started: the refusal touches nothing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sandboxer.domain.drift import live_attempt, reconcile_step
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.extensions.capabilities import AttemptScoped
from sandboxer.extensions.local import LocalExtension
from sandboxer.extensions.local.attempt_record import listed, made_later, recorded, removable
from sandboxer.extensions.local.inventory import scan_sandboxes

SID, MEMBER = "sbxattempt0001", "pool00000001"


def test_the_record_is_two_counts_and_anything_else_is_none() -> None:
    assert recorded([2, 3]) == (2, 3)
    assert recorded((1, 1)) == (1, 1)
    for bad in (None, [], [1], [1, 2, 3], "12", {"1": 2}, 12, [True, 1], [1, "2"], [-1, 1]):
        assert recorded(bad) is None


def test_a_provisioning_removes_its_own_and_earlier_ones_and_never_a_later_ones() -> None:
    assert removable([1, 2], (1, 2))
    assert removable([1, 2], (1, 3))
    assert removable([1, 9], (2, 1))  # a recreate's clean start: the generation before
    assert not removable([1, 3], (1, 2))  # a later attempt's: the log's ready names it
    assert not removable([2, 1], (1, 9))  # a recreate's, whatever the earlier attempt
    assert made_later([2, 1], (1, 9)) == (2, 1)
    assert made_later([1, 2], (1, 2)) is None


def test_a_sandbox_without_the_record_counts_as_earlier_than_every_provisioning() -> None:
    # Made before the record, or by a provision that died before its first write: as a
    # hosted sandbox without its attempt label (hosted.attempt_fence.removable).
    old: object
    for old in (None, [], "corrupt"):
        assert removable(old, (1, 1))
        assert made_later(old, (1, 1)) is None


def test_a_claimed_members_record_is_not_listed() -> None:
    assert listed([2, 1], None, SID) == (2, 1)
    assert listed([1, 1], SID, SID) == (1, 1)  # a member in the pool's root names itself
    assert listed([1, 1], MEMBER, SID) is None  # a claim may have left its member's


def write_state(root: Path, sandbox_id: str, **fields: Any) -> None:
    directory = root / sandbox_id
    (directory / "workspace").mkdir(parents=True)
    state = {"sandbox_id": sandbox_id, "created_at": "t", "workspace": "w", **fields}
    (directory / "state.json").write_text(json.dumps(state))


def ready_at(generation: int, attempt: int) -> SandboxState:
    return SandboxState(
        sandbox_id=SID,
        status="ready",
        extension="ext.local",
        generation=generation,
        attempt=attempt,
    )


def test_the_listing_says_who_made_each_sandbox(tmp_path: Path) -> None:
    write_state(tmp_path, SID, made_by=[2, 1])
    write_state(tmp_path, "sbxolder000001")  # made before the record
    found = {item.sandbox_id: item.made_by for item in scan_sandboxes(tmp_path)}
    assert found == {SID: (2, 1), "sbxolder000001": None}


def test_the_drift_leaves_the_one_sandbox_the_log_names(tmp_path: Path) -> None:
    """ext.local holds one sandbox per id: what it lists is the one the log's ready names,
    never judged an earlier attempt's copy; nor is a claimed member whose record a claim
    before its own record left at the member's [1, 1] while the log says generation 2."""
    write_state(tmp_path, SID, made_by=[2, 1])
    [found] = scan_sandboxes(tmp_path)
    live = live_attempt([found], ready_at(2, 1), "ext.local")
    assert live == (2, 1)
    assert reconcile_step(found, "ext.local", ready_at(2, 1), live) == "fail"  # no holder runs
    claimed = tmp_path / "claimed"
    write_state(claimed, SID, made_by=[1, 1], pool_member=MEMBER)
    [found] = scan_sandboxes(claimed)
    assert live_attempt([found], ready_at(2, 1), "ext.local") is None


def test_ext_local_is_attempt_scoped(tmp_path: Path) -> None:
    assert isinstance(LocalExtension(tmp_path), AttemptScoped)


@pytest.mark.parametrize("mine", [(1, 9), (2, 1)])
async def test_a_teardown_of_an_earlier_provisioning_leaves_a_later_ones_sandbox(
    tmp_path: Path, mine: tuple[int, int]
) -> None:
    write_state(tmp_path, SID, made_by=[2, 2])
    await LocalExtension(tmp_path).teardown_attempt(SID, mine)
    assert (tmp_path / SID / "state.json").is_file()
