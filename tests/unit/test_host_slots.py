"""Host-wide slots (link blocks and sandbox uids), in a temporary directory; the uid range;
and what :mod:`.keyrings` reads of the kernel without needing root."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from sandboxer.errors import ExtensionError
from sandboxer.extensions.local import egress, keyrings, sandbox_uids
from sandboxer.extensions.local.host_slots import SlotFiles


@pytest.fixture(params=["links", "uids"])
def kind(request: pytest.FixtureRequest, tmp_path: Path) -> SlotFiles:
    """Each kind of slot ext.local takes, both through the one mechanism."""
    if request.param == "links":
        return egress.link_slots(tmp_path / "egress-slots")
    return sandbox_uids.uid_slots(tmp_path / "uids")


def test_slots_are_taken_once_even_under_concurrency(kind: SlotFiles) -> None:
    taken: list[int] = []
    names = [f"sandbox{index:03d}-tag" for index in range(40)]
    rivals = [kind, SlotFiles(kind.directory, kind.slots, kind.noun, kind.holders)]

    def take(index: int, name: str) -> None:  # as two workers of one host would
        taken.append(rivals[index % 2].allocate(name, fresh=True))

    threads = [threading.Thread(target=take, args=item) for item in enumerate(names)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(taken)) == 40
    assert set(taken) <= set(kind.slots)
    assert sorted(int(path.name) for path in kind.directory.iterdir()) == sorted(taken)
    for name in names:
        (slot,) = kind.owned_by(name)
        assert (kind.directory / str(slot)).read_text() == f"{name}\n"


def test_asking_again_returns_the_slot_already_held(kind: SlotFiles) -> None:
    first = kind.allocate("sandbox001-tag")
    # A redelivered provision: found by its record (one read), or by name (every file).
    assert kind.allocate("sandbox001-tag", recorded=first) == first
    assert kind.allocate("sandbox001-tag") == first
    # A record naming a slot that is no longer its own is not taken for it.
    other = kind.allocate("sandbox002-tag")
    assert kind.allocate("sandbox001-tag", recorded=other) == first
    assert kind.owned_by("sandbox001-tag") == [first]
    # fresh: the caller knows nothing of it is left, so no file is read for the name.
    assert kind.allocate("sandbox003-tag", fresh=True) not in {first, other}


def test_a_slot_is_released_only_by_its_holder(kind: SlotFiles) -> None:
    mine = kind.allocate("sandbox001-tag")
    kind.release("sandbox002-tag", mine)  # not sandbox002's: left alone
    assert kind.holds("sandbox001-tag", mine)
    kind.release("sandbox001-tag", mine)
    assert kind.owned_by("sandbox001-tag") == []
    assert not kind.holds("sandbox001-tag", mine)
    kind.release("sandbox001-tag", mine)  # again: nothing to do


def test_when_every_slot_is_taken_the_error_says_who_holds_them(tmp_path: Path) -> None:
    few = SlotFiles(tmp_path / "few", range(7, 10), "a uid", "local sandboxes")
    assert sorted(few.allocate(f"sandbox{n:03d}-tag") for n in range(3)) == [7, 8, 9]
    with pytest.raises(ExtensionError, match="none is free: 3 local sandboxes exist"):
        few.allocate("sandbox999-tag")


def test_an_unusable_directory_is_named(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("a file, not a directory")
    slots = sandbox_uids.uid_slots(tmp_path / "run" / "uids")
    with pytest.raises(ExtensionError, match=r"cannot take a uid \(.*/run/uids\)"):
        slots.allocate("sandbox001-tag")
    assert slots.owned_by("sandbox001-tag") == []  # and nothing breaks on reading it


def test_the_uid_range_is_clear_of_every_range_hosts_give_out() -> None:
    uids = sandbox_uids.UIDS
    assert len(uids) == 65536
    # systemd's unassigned range, between the nspawn container ranges and the foreign range.
    assert uids[0] >= 1879048192
    assert uids[-1] <= 2147352575
    assert uids[-1] < 2**31  # some programs read a uid at or past 2^31 as negative
    assert uids[0] > 600100000 + 65536  # the default SUB_UID_MAX of /etc/subuid ranges
    assert uids[0] > 1_000_999_999  # LXD's and Incus's default map
    assert sandbox_uids.NOBODY not in uids


def test_the_uid_range_is_clear_of_this_hosts_subordinate_ids_and_users() -> None:
    """What this machine gives out (docs/ext-local.md#users-and-keyrings): /etc/subuid and
    /etc/subgid ranges, and the uids and gids its users and groups have."""
    uids = sandbox_uids.UIDS
    for table in ("/etc/subuid", "/etc/subgid"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines():
            fields = line.split(":")
            if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
                start, count = int(fields[1]), int(fields[2])
                assert start + count <= uids[0] or start > uids[-1], line
    for table in ("/etc/passwd", "/etc/group"):
        for line in Path(table).read_text().splitlines():
            fields = line.split(":")
            if len(fields) > 2 and fields[2].isdigit():
                assert int(fields[2]) not in uids, line


def test_key_users_are_found_by_exact_uid(tmp_path: Path) -> None:
    key_users = tmp_path / "key-users"
    lines = ["    0:     9 8/8 3/1000000 56/25000000", "2000000020:     3 3/3 3/200 50/20000"]
    key_users.write_text("\n".join(lines) + "\n")
    assert keyrings.held(2000000020, key_users)
    assert keyrings.held(0, key_users)
    assert not keyrings.held(20, key_users)  # a suffix of a listed uid is not that uid
    assert not keyrings.held(2000000021, key_users)
    assert not keyrings.held(0, tmp_path / "missing")  # a kernel without keys


def test_keyctl_is_known_on_this_machine() -> None:
    """Every machine the project runs on (Debian's release architectures) has its number.
    (Joined in a throwaway thread: a session keyring is the joining thread's, and this
    process's other tests start sandboxes.)"""
    assert keyrings.AVAILABLE
    failed: list[BaseException] = []

    def join() -> None:
        try:
            keyrings.join_new_session()
        except BaseException as exc:  # seen by the test's thread
            failed.append(exc)

    thread = threading.Thread(target=join)
    thread.start()
    thread.join()
    assert failed == []


def test_a_recorded_uid_outside_the_sandboxes_range_runs_nothing() -> None:
    """A state.json edited by hand or corrupted to say uid 0 must not run a sandbox's
    commands as root: only the sandboxes' range, or 65534 (made before uids of their own)."""
    from sandboxer.errors import ExtensionError
    from sandboxer.extensions.local import sandbox_uids
    from sandboxer.extensions.local.backend import LocalExtension
    from sandboxer.extensions.local.workspace import State

    def state(uid: int | None) -> State:
        return State(sandbox_id="s1", created_at="2026-12-03T00:00:00Z", workspace="/w", uid=uid)

    assert LocalExtension._uid_of(state(None)) == sandbox_uids.NOBODY
    assert LocalExtension._uid_of(state(sandbox_uids.NOBODY)) == sandbox_uids.NOBODY
    assert LocalExtension._uid_of(state(sandbox_uids.UIDS.start)) == sandbox_uids.UIDS.start
    for bad in (0, 1000, sandbox_uids.UIDS.stop):
        with pytest.raises(ExtensionError, match="outside the sandboxes' range"):
            LocalExtension._uid_of(state(bad))


def test_files_that_name_no_slot_of_the_kind_are_never_counted(kind: SlotFiles) -> None:
    """A file put there by hand (uid 0, a link block of the metadata service's range, a
    number past the range) is not one of ours to clear or free."""
    mine = kind.allocate("sandbox001-tag")
    strays = [0, kind.slots[0] - 1, kind.slots[-1] + 1]
    if kind.noun == "an egress slot":
        strays.append(169 * 256 // 4)  # 169.254.169.0/30: a gap inside the range
        assert strays[-1] not in kind.slots
    for stray in strays:
        (kind.directory / str(stray)).write_text("sandbox001-tag\n")
    assert kind.held() == {mine: "sandbox001-tag"}
    assert kind.owned_by("sandbox001-tag") == [mine]
