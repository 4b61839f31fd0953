"""Slots and groups a lost sandbox directory leaves on the host (uids and link slots under
/run/sandboxer, cgroups) are found and freed, and only this root's unused ones: real
sandboxes, real slot files and cgroups, a real leftover (its holder killed, its directory
removed behind the backend's back). docs/ext-local.md#users-and-keyrings, "Leftover
slots"."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from pathlib import Path

import pytest

from sandboxer.config.profile import Profile
from sandboxer.errors import ExtensionError
from sandboxer.extensions.base import ProvisionRequest
from sandboxer.extensions.local import LocalExtension, backend, cgroups, keyrings
from sandboxer.extensions.local.egress import SLOTS_DIR, namespace_path
from sandboxer.extensions.local.egress_policy import LocalEgress, namespace_for
from sandboxer.extensions.local.leftovers import Leftover
from sandboxer.extensions.local.procs import ProcessRef, kill
from sandboxer.extensions.local.sandbox_uids import UIDS_DIR
from tests.conftest import require_tool
from tests.integration.conftest import Service

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def keyctl() -> str:
    for name, package in (("ip", "iproute2"), ("nft", "nftables"), ("setpriv", "util-linux")):
        require_tool(name, package)
    if os.geteuid() != 0:
        pytest.fail("uids and link slots are taken only by a root-run worker", pytrace=False)
    return require_tool("keyctl", "keyutils")


def networked(root: Path) -> LocalExtension:
    """A backend whose sandboxes get a link (and so a link slot): nothing connects."""
    return LocalExtension(root, egress_for=lambda _request: LocalEgress(allow_all=True))


def new_id() -> str:
    return "t" + uuid.uuid4().hex[:15]


async def up(ext: LocalExtension, sandbox_id: str) -> dict[str, object]:
    prof = Profile.model_validate({"id": "profile.test", "extension": "ext.local"})
    await ext.provision(ProvisionRequest(sandbox_id=sandbox_id, profile=prof, inputs={}))
    state: dict[str, object] = json.loads((ext.root / sandbox_id / "state.json").read_text())
    return state


async def lose(ext: LocalExtension, sandbox_id: str) -> None:
    """What a crash or a hand leaves: its holder killed, then its directory removed."""
    state = json.loads((ext.root / sandbox_id / "state.json").read_text())
    refs = [ProcessRef(state[f"{n}_pid"], state[f"{n}_start_time"]) for n in ("holder", "monitor")]
    for ref in refs:
        kill(ref)
    async with asyncio.timeout(5):
        while any(ref.alive() for ref in refs):
            await asyncio.sleep(0.02)
    shutil.rmtree(ext.root / sandbox_id)


def name_of(ext: LocalExtension, sandbox_id: str) -> str:
    return f"{sandbox_id}-{ext._root_tag}\n"


async def test_a_lost_directory_s_uid_and_link_slot_are_found_and_freed_with_its_keys(
    tmp_path: Path, keyctl: str
) -> None:
    ext, other = networked(tmp_path / "one"), networked(tmp_path / "two")
    try:
        lost, kept, theirs = new_id(), new_id(), new_id()
        state = await up(ext, lost)
        uid, slot = state["uid"], state["egress"]["slot"]  # type: ignore[index]
        assert isinstance(uid, int)
        assert isinstance(slot, int)
        await up(ext, kept)
        await up(other, theirs)  # another root's, on the same host
        # A key in the uid's user keyring, which outlives its processes.
        stash = f"{keyctl} link @u @s && {keyctl} add user probe secret @u >/dev/null"
        assert await ext.exec(lost, ["sh", "-c", stash], _discard) == 0
        assert keyrings.held(uid)
        assert await ext.list_leftovers() == []  # every slot has its directory

        await lose(ext, lost)
        await lose(other, theirs)
        assert (UIDS_DIR / str(uid)).read_text() == name_of(ext, lost)
        assert (SLOTS_DIR / str(slot)).read_text() == name_of(ext, lost)

        # A process still running as the uid: not provably unowned, left alone.
        user = await asyncio.create_subprocess_exec(
            "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sleep", "60"
        )
        try:
            async with asyncio.timeout(5):
                while await ext.list_leftovers() != []:
                    await asyncio.sleep(0.02)
            assert await ext.free_leftovers([lost]) == []
        finally:
            user.kill()
            await user.wait()

        [found] = await ext.list_leftovers()  # not the other root's, nor the live one's
        assert (found.sandbox_id, found.alive, found.leftover) == (lost, False, True)
        assert found.detail["uids"] == [uid]
        assert found.detail["link_slots"] == [slot]
        groups = cgroups.sandbox_dirs(name_of(ext, lost).strip())
        assert groups  # its pids and freezer groups at least
        assert found.detail["cgroups"] == sorted(str(path) for path in groups)
        assert "its directory is gone" in found.detail["dead"]
        assert [f.sandbox_id for f in await other.list_leftovers()] == [theirs]

        assert await ext.free_leftovers([lost]) == [lost]
        assert not (UIDS_DIR / str(uid)).exists()
        assert not (SLOTS_DIR / str(slot)).exists()
        assert not namespace_path(namespace_for(name_of(ext, lost).strip())).exists()
        assert not any(path.exists() for path in groups)
        async with asyncio.timeout(5):  # the kernel frees invalidated keys a moment later
            while keyrings.held(uid):
                await asyncio.sleep(0.02)
        assert await ext.list_leftovers() == []
        assert await ext.free_leftovers([lost]) == []
        # The other root's and the live sandbox's slots are untouched.
        assert [f.sandbox_id for f in await other.list_leftovers()] == [theirs]
        assert (await ext.list_sandboxes())[0].alive
    finally:
        for root in (ext, other):
            for found in await root.list_sandboxes():
                await root.teardown(found.sandbox_id)
            await root.free_leftovers([found.sandbox_id for found in await root.list_leftovers()])


async def test_a_group_left_with_no_directory_is_a_leftover_and_freed(tmp_path: Path) -> None:
    """A cgroup alone (its slots freed, its directory gone: a teardown cut short between
    the two, or a hand) is found and removed; another root's of the same id is not."""
    ext = LocalExtension(tmp_path / "one")
    lost = new_id()
    ours = cgroups.CGROUP_BASE / "pids" / "sandboxer" / name_of(ext, lost).strip()
    theirs = ours.with_name(f"{lost}-ffffffff")
    for group in (ours, theirs):
        group.mkdir(parents=True)
    try:
        [found] = await ext.list_leftovers()
        assert (found.sandbox_id, found.detail["cgroups"]) == (lost, [str(ours)])
        assert (found.detail["uids"], found.detail["link_slots"]) == ([], [])
        assert await ext.free_leftovers([lost]) == [lost]
        assert not ours.exists()
        assert theirs.exists()
        assert await ext.list_leftovers() == []
    finally:
        for group in (ours, theirs):
            if group.exists():
                group.rmdir()


async def test_a_home_torn_down_whole_goes_on_past_a_teardown_that_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``tear_down_everything`` (a test's, a benchmark's or the fault suite's home, about to be
    removed): a sandbox whose teardown fails does not keep the others, or a lost directory's
    groups and uid, from going; the failure is raised at the end, and a second call ends it."""
    ext = LocalExtension(tmp_path / "local")
    stuck, other, lost = new_id(), new_id(), new_id()
    for sandbox_id in (stuck, other, lost):
        await up(ext, sandbox_id)
    await lose(ext, lost)
    real_teardown = LocalExtension.teardown

    async def failing_once(self: LocalExtension, sandbox_id: str, **kwargs: object) -> None:
        if sandbox_id == stuck and not failed:
            failed.append(sandbox_id)
            raise ExtensionError(f"{sandbox_id}: would not go", sandbox_id=sandbox_id)
        await real_teardown(self, sandbox_id)

    failed: list[str] = []
    monkeypatch.setattr(LocalExtension, "teardown", failing_once)
    try:
        with pytest.raises(ExtensionError, match="would not go"):
            await ext.tear_down_everything()
        assert [found.sandbox_id for found in await ext.list_sandboxes()] == [stuck]
        assert await ext.list_leftovers() == []  # the lost one's groups and uid freed too
    finally:
        failed.append("done")  # whatever happened above, the next call fails nothing
        await ext.tear_down_everything()
    assert await ext.list_sandboxes() == []


async def test_stale_reports_the_leftover_and_reap_frees_it(service: Service) -> None:
    """Through the bus: the log calls the sandbox ready, its directory is gone and its uid
    left. It was a ghost (marked failed, its uid taken until reboot); now it is a corpse
    whose uid reap-stale --apply frees."""
    client = service.client
    local = LocalExtension(service.settings.local_root)
    sandbox_id = (await client.create())["sandbox_id"]
    healthy = (await client.create())["sandbox_id"]
    uid = json.loads((local.root / sandbox_id / "state.json").read_text())["uid"]
    await lose(local, sandbox_id)

    [stale] = await client.inventory("stale", "ext.local", {})
    [drift] = stale["hosts"]
    assert (drift["orphans"], drift["ghosts"]) == ([], [])
    [corpse] = drift["corpses"]
    assert (corpse["sandbox_id"], corpse["leftover"]) == (sandbox_id, True)
    assert corpse["detail"]["uids"] == [uid]
    assert "its directory is gone" in corpse["reason"]

    [reaped] = await client.inventory("reap", "ext.local", {"apply": True})
    assert reaped["hosts"][0]["removed"] == [sandbox_id]
    assert reaped["hosts"][0]["marked_failed"] == [sandbox_id]
    assert not (UIDS_DIR / str(uid)).exists()
    assert (await client.get(sandbox_id))["status"] == "failed"  # type: ignore[index]
    assert (await client.get(healthy))["status"] == "ready"  # type: ignore[index]
    [again] = await client.inventory("stale", "ext.local", {})
    assert again["hosts"][0]["corpses"] == []


async def test_one_reap_looks_at_the_host_once_for_all_its_leftovers(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three lost sandboxes, one reap: the host is looked at (every slot file, every
    directory's state.json, every process's status) once to list them and once per batch
    of them (two here, of at most two), under their locks, to free them, not once more per
    sandbox."""
    client = service.client
    local = LocalExtension(service.settings.local_root)
    lost = [(await client.create())["sandbox_id"] for _ in range(3)]
    uids = [json.loads((local.root / sid / "state.json").read_text())["uid"] for sid in lost]
    for sandbox_id in lost:
        await lose(local, sandbox_id)
    looks = 0
    look = LocalExtension._leftovers

    def counted(self: LocalExtension) -> list[Leftover]:
        nonlocal looks
        looks += 1
        return look(self)

    monkeypatch.setattr(LocalExtension, "_leftovers", counted)
    monkeypatch.setattr(backend, "FREE_BATCH", 2)
    [reaped] = await client.inventory("reap", "ext.local", {"apply": True})
    assert sorted(reaped["hosts"][0]["removed"]) == sorted(lost)
    assert looks == 3
    assert not any((UIDS_DIR / str(uid)).exists() for uid in uids)


async def _discard(stream: str, data: bytes) -> None:
    del stream, data
