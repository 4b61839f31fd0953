"""Leftover slots and groups (docs/ext-local.md#users-and-keyrings): which slot files and
cgroups are this root's and no directory's (pure), the names a root's directories account for,
and the fault suite's check that lists them (chaos/checks.py ``leaked_slots``), over real files
and directories in a temporary directory."""

from __future__ import annotations

import json
from pathlib import Path

from chaos.checks import leaked_slots
from sandboxer.extensions.local import cgroups, egress, sandbox_uids
from sandboxer.extensions.local.inventory import owners
from sandboxer.extensions.local.leftovers import Leftover, find_leftovers
from sandboxer.extensions.local.resource_names import owner_of, resource_name, root_tag
from sandboxer.extensions.local.sandbox_lock import LOCK_FILE
from sandboxer.extensions.local.workspace import POOL_DIR

TAG = "0a1b2c3d"
GONE, LIVE, MEMBER = "sbxgone00001", "sbxlive00001", "pool00000001"


def test_a_name_is_this_roots_only_with_its_tag_and_a_valid_id() -> None:
    assert owner_of(resource_name(GONE, TAG), TAG) == GONE
    assert owner_of(resource_name(GONE, "ffffffff"), TAG) is None  # another root's
    for name in ("", TAG, f"-{TAG}", f"Bad_Id-{TAG}", f"a-b-{TAG}", f"short-{TAG}"):
        assert owner_of(name, TAG) is None


def test_leftovers_are_this_roots_slots_whose_sandbox_has_no_directory() -> None:
    uids = {
        2000000007: f"{GONE}-{TAG}",
        2000000003: f"{GONE}-{TAG}",  # a stray second one: both reported
        2000000001: f"{LIVE}-{TAG}",
        2000000002: f"{GONE}-ffffffff",  # another root's sandbox of the same id
        2000000004: "garbage",
    }
    links = {5: f"{GONE}-{TAG}", 6: f"{MEMBER}-{TAG}", 7: f"{LIVE}-{TAG}"}
    assert find_leftovers(uids, links, TAG, {LIVE}) == [
        Leftover(MEMBER, (), (6,)),
        Leftover(GONE, (2000000003, 2000000007), (5,)),
    ]
    assert find_leftovers(uids, links, TAG, {LIVE, GONE, MEMBER}) == []


def test_a_group_is_left_over_when_its_name_is_this_roots_and_no_directory_owns_it() -> None:
    pids, freezer = Path("/cg/pids/sandboxer"), Path("/cg/freezer/sandboxer")
    groups = {
        f"{GONE}-{TAG}": [pids / f"{GONE}-{TAG}", freezer / f"{GONE}-{TAG}"],
        f"{LIVE}-{TAG}": [pids / f"{LIVE}-{TAG}"],
        f"{MEMBER}-ffffffff": [pids / f"{MEMBER}-ffffffff"],  # another root's
        "not-ours": [pids / "not-ours"],
    }
    links = {5: f"{GONE}-{TAG}"}
    assert find_leftovers({}, links, TAG, {LIVE}, groups) == [
        Leftover(
            GONE,
            (),
            (5,),
            (str(freezer / f"{GONE}-{TAG}"), str(pids / f"{GONE}-{TAG}")),
        )
    ]
    assert find_leftovers({}, {}, TAG, {LIVE, GONE}, groups) == []


def test_a_leftover_is_seen_as_a_dead_sandbox_naming_what_it_holds() -> None:
    found = Leftover(GONE, (2000000003,), (5,)).found()
    assert (found.sandbox_id, found.alive, found.leftover) == (GONE, False, True)
    assert (
        found.detail["dead"]
        == "its directory is gone, and uid 2000000003 and link slot 5 still taken"
    )
    grouped = Leftover(GONE, cgroups=("/cg/pids/sandboxer/x",)).found()
    assert grouped.detail["cgroups"] == ["/cg/pids/sandboxer/x"]
    assert grouped.detail["dead"] == (
        "its directory is gone, and cgroup /cg/pids/sandboxer/x still taken"
    )


def make_root(tmp_path: Path) -> Path:
    """A root with a sandbox, a claimed one (its state names the member it was), a pool member
    and something that is no sandbox."""
    root = tmp_path / "local"
    for directory in (root / LIVE, root / "sbxclaimed01", root / POOL_DIR / "pool00000002"):
        directory.mkdir(parents=True)
    (root / "sbxclaimed01" / "state.json").write_text(
        json.dumps({"sandbox_id": MEMBER, "created_at": "", "workspace": "", "pool_member": MEMBER})
    )
    (root / LOCK_FILE).touch()
    return root


def test_a_roots_directories_own_their_names_and_their_pool_members(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    assert owners([root / POOL_DIR, root]) == {LIVE, "sbxclaimed01", MEMBER, "pool00000002"}
    assert owners([tmp_path / "nowhere"]) == set()


def test_the_fault_suites_check_lists_the_slots_a_lost_directory_left(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    tag = root_tag(root)
    uids = sandbox_uids.uid_slots(tmp_path / "uids")
    links = egress.link_slots(tmp_path / "egress-slots")
    for name in (LIVE, MEMBER, "pool00000002"):
        uids.allocate(resource_name(name, tag), fresh=True)
    links.allocate(resource_name(LIVE, tag), fresh=True)
    uids.allocate(resource_name(GONE, "ffffffff"), fresh=True)  # another root's: not ours to judge

    base = tmp_path / "cgroup"
    for name in (LIVE, MEMBER):  # the claimed sandbox's groups keep its member's name
        (base / "pids" / "sandboxer" / resource_name(name, tag)).mkdir(parents=True)
    (base / "pids" / "sandboxer" / resource_name(GONE, "ffffffff")).mkdir()

    def check() -> list[str]:
        return leaked_slots(
            root, uids_dir=uids.directory, links_dir=links.directory, cgroup_base=base
        )

    assert check() == []
    lost_uid = uids.allocate(resource_name(GONE, tag), fresh=True)
    lost_link = links.allocate(resource_name(GONE, tag), fresh=True)
    lost_group = base / "freezer" / "sandboxer" / resource_name(GONE, tag)
    lost_group.mkdir(parents=True)
    assert check() == [
        f"{GONE}: no directory under {root}, yet uids [{lost_uid}], link slots "
        f"[{lost_link}] and cgroups [{str(lost_group)!r}] are still there"
    ]
    uids.release(resource_name(GONE, tag), lost_uid)
    links.release(resource_name(GONE, tag), lost_link)
    assert check() == [
        f"{GONE}: no directory under {root}, yet uids [], link slots [] and cgroups "
        f"[{str(lost_group)!r}] are still there"
    ]
    lost_group.rmdir()
    assert check() == []


def test_groups_are_found_by_name_in_every_hierarchy_sandboxes_use(tmp_path: Path) -> None:
    for parent in ("pids/sandboxer", "freezer/sandboxer", "sandboxer", "memory/other"):
        (tmp_path / parent / f"{GONE}-{TAG}").mkdir(parents=True)
    (tmp_path / "pids" / "sandboxer" / "tasks").write_text("")  # a file of the group itself
    found = cgroups.groups_by_name(tmp_path)
    assert sorted(found) == [f"{GONE}-{TAG}"]
    assert sorted(found[f"{GONE}-{TAG}"]) == sorted(
        tmp_path / parent / f"{GONE}-{TAG}"
        for parent in ("pids/sandboxer", "freezer/sandboxer", "sandboxer")
    )
    assert cgroups.groups_by_name(tmp_path / "nowhere") == {}


def test_held_lists_every_slot_file_and_its_name(tmp_path: Path) -> None:
    uids = sandbox_uids.uid_slots(tmp_path / "uids")
    assert uids.held() == {}  # no directory yet
    first = uids.allocate(f"{GONE}-{TAG}", fresh=True)
    second = uids.allocate(f"{LIVE}-{TAG}", fresh=True)
    (uids.directory / "not-a-slot").write_text("x")
    assert uids.held() == {first: f"{GONE}-{TAG}", second: f"{LIVE}-{TAG}"}
    assert uids.owned_by(f"{LIVE}-{TAG}") == [second]
