"""The control worker's snapshot commands on the in-memory store: a crash between the two
appends is completed by the redelivered command, and a restore becomes the right create."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import pytest
from nats.js import JetStreamContext

from sandboxer.bus.event_store import LoadedSnapshot
from sandboxer.bus.memory_store import MemoryEventStore
from sandboxer.commands.types import RestoreSnapshot, SnapshotSandbox
from sandboxer.config.catalog import Catalog
from sandboxer.domain.admission import admit_create
from sandboxer.domain.snapshot_decide import DeleteSnapshotDecision, RecordSnapshotStored
from sandboxer.errors import Rejected
from sandboxer.events.types import SYSTEM_ACTOR, SnapshotEvent, event_type
from sandboxer.ids import derive_snapshot_id
from sandboxer.workers.deciding import apply, apply_snapshot
from sandboxer.workers.jobs import job_for
from sandboxer.workers.snapshot_commands import SnapshotCommands
from tests.unit.test_snapshot_domain import SID, ready_sandbox

NO_BUS = cast("JetStreamContext", None)  # only delete reaches the bucket (test_snapshot_delete)


class CrashOnceStore(MemoryEventStore):
    """The process dies after the sandbox's append, before the snapshot's (once)."""

    crash = True

    async def append_snapshot(
        self, loaded: LoadedSnapshot, events: Sequence[SnapshotEvent]
    ) -> LoadedSnapshot:
        if self.crash:
            self.crash = False
            raise RuntimeError("killed")
        return await super().append_snapshot(loaded, events)


def snapshot_command() -> SnapshotSandbox:
    return SnapshotSandbox(command_id="c-snap", actor=SYSTEM_ACTOR, sandbox_id=SID, name="n")


async def test_a_redelivered_snapshot_completes_the_second_append_once(tmp_path: Path) -> None:
    store = CrashOnceStore()
    await ready_sandbox(store)
    commands = SnapshotCommands(NO_BUS, store, Catalog.load(tmp_path))
    with pytest.raises(RuntimeError):
        await commands.snapshot(snapshot_command())
    snapshot_id = derive_snapshot_id("c-snap")
    assert (await store.load_snapshot(snapshot_id)).state.status == "new"
    loaded = await commands.snapshot(snapshot_command())
    snapshot = (await store.load_snapshot(snapshot_id)).state
    assert (snapshot.status, snapshot.sandbox_id, snapshot.name) == ("requested", SID, "n")
    assert [event_type(e) for e in store.log].count("snapshot_started") == 1
    job = job_for(loaded.state)
    assert job is not None
    assert (job.action, job.snapshot_id) == ("snapshot", snapshot_id)


async def test_a_restore_is_a_create_of_the_snapshots_object(tmp_path: Path) -> None:
    store = MemoryEventStore()
    await ready_sandbox(store)
    commands = SnapshotCommands(NO_BUS, store, Catalog.load(tmp_path))
    await commands.snapshot(snapshot_command())
    snapshot_id = derive_snapshot_id("c-snap")
    restore = RestoreSnapshot(command_id="c-restore", actor=SYSTEM_ACTOR, snapshot_id=snapshot_id)
    with pytest.raises(Rejected, match="still being taken"):
        await commands.restore_as_create(restore)
    stored = RecordSnapshotStored(
        job_id="j",
        bucket="SANDBOXER_WORKSPACES",
        object="sha256-" + "a" * 64,
        size=1,
        sha256="a" * 64,
    )
    await apply_snapshot(store, snapshot_id, stored)
    create = await commands.restore_as_create(restore)
    assert (create.profile, create.command_id) == ("profile.local", "c-restore")
    assert create.inputs == {"repo": "object:sha256:" + "a" * 64}
    clash = RestoreSnapshot(
        command_id="c-r2", actor=SYSTEM_ACTOR, snapshot_id=snapshot_id, inputs={"repo": "/etc"}
    )
    with pytest.raises(Rejected, match="receives the snapshot's workspace"):
        await commands.restore_as_create(clash)


async def test_a_decided_restore_is_completed_even_after_its_snapshot_is_deleted(
    tmp_path: Path,
) -> None:
    store = MemoryEventStore()
    await ready_sandbox(store)
    commands = SnapshotCommands(NO_BUS, store, Catalog.load(tmp_path))
    await commands.snapshot(snapshot_command())
    snapshot_id = derive_snapshot_id("c-snap")
    stored = RecordSnapshotStored(
        job_id="j", bucket="B", object="sha256-" + "b" * 64, size=1, sha256="b" * 64
    )
    await apply_snapshot(store, snapshot_id, stored)
    restore = RestoreSnapshot(
        command_id="c-restore", actor=SYSTEM_ACTOR, snapshot_id=snapshot_id, sandbox_id="restored01"
    )
    create = await commands.restore_as_create(restore)
    admitted = admit_create(
        create,
        Catalog.load(tmp_path).profile("profile.local"),
        {"ext.local": Catalog.load(tmp_path).extensions_enabled()["ext.local"]},
    )
    await apply(store, "restored01", dataclasses.replace(admitted, restored_from=snapshot_id))
    await apply_snapshot(
        store, snapshot_id, DeleteSnapshotDecision(command_id="c-del", actor=SYSTEM_ACTOR)
    )
    again = await commands.restore_as_create(restore)  # the command redelivered after a crash
    assert again.inputs == create.inputs
    assert (await store.load("restored01")).state.restored_from == snapshot_id


async def test_a_restore_passes_over_backends_that_drop_a_directory_input(
    tmp_path: Path,
) -> None:
    """ext.saas-stub and the hosted backends copy no directory input in: a restore there
    would be ready without the snapshot's workspace."""
    store = MemoryEventStore()
    await ready_sandbox(store)
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "profile.stub-repo.yaml").write_text(
        "id: profile.stub-repo\nextension: ext.saas-stub\nnetwork: {default: allow}\n"
        "inputs:\n  repo: {type: directory}\n"
    )
    commands = SnapshotCommands(NO_BUS, store, Catalog.load(tmp_path))
    await commands.snapshot(snapshot_command())
    snapshot_id = derive_snapshot_id("c-snap")
    stored = RecordSnapshotStored(
        job_id="j", bucket="B", object="sha256-" + "d" * 64, size=1, sha256="d" * 64
    )
    await apply_snapshot(store, snapshot_id, stored)

    def restore(profile: str) -> RestoreSnapshot:
        return RestoreSnapshot(
            command_id=f"c-{profile}", actor=SYSTEM_ACTOR, snapshot_id=snapshot_id, profile=profile
        )

    burst = await commands.restore_as_create(restore("profile.burst-sandbox"))
    assert commands.passed_over(burst) == ("ext.saas-stub", "ext.e2b")
    assert commands.passed_over(await commands.restore_as_create(restore("profile.local"))) == ()
    with pytest.raises(Rejected, match=r"ext\.saas-stub, which does not copy") as refused:
        await commands.restore_as_create(restore("profile.stub-repo"))
    assert refused.value.code == "not_restorable"
