"""The snapshots table knows each snapshot's owner (domain/key_access.snapshot_owner), also
for one recorded before snapshot_requested named its project, so ``snapshot.list`` narrows
to a project in SQL and its limit counts that project's snapshots only."""

from __future__ import annotations

from pathlib import Path

from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.domain.snapshot_state import SnapshotState
from sandboxer.events.actor import Actor
from sandboxer.projections.sandbox_view import SandboxView

BETA = Actor(type="agt", id="k2", project="beta")
OPS = Actor(type="adm", id="ops")  # an administrator's snapshot is its sandbox's project's
ALPHA = Actor(type="agt", id="k1", project="alpha")


def snapshot(snapshot_id: str, sandbox_id: str, actor: Actor, project: str | None) -> SnapshotState:
    return SnapshotState(
        snapshot_id=snapshot_id,
        status="requested",
        sandbox_id=sandbox_id,
        actor=actor,
        project=project,
        requested_at=f"2020-01-01T00:00:0{snapshot_id[-1]}.000Z",
    )


async def test_a_snapshot_without_a_recorded_project_is_listed_as_its_sandboxs(
    tmp_path: Path,
) -> None:
    view = await SandboxView.open(tmp_path / "view.db")
    try:
        box = SandboxState(sandbox_id="sbxbeta", status="ready", actor=BETA)
        # the sandbox in the same batch (a rebuild), then in the view (a later batch)
        await view.save([(box, 1)], [], 2, snapshots=[(snapshot("snp1", "sbxbeta", OPS, None), 2)])
        later = [
            (snapshot("snp2", "sbxbeta", OPS, None), 3),
            (snapshot("snp3", "sbxgone", ALPHA, None), 4),  # no such sandbox: the taker's
            (snapshot("snp4", "sbxbeta", OPS, "beta"), 5),
        ]
        await view.save([], [], 5, snapshots=later)

        def ids(states: list[SnapshotState]) -> list[str]:
            return [s.snapshot_id for s in states]

        assert ids(await view.list_snapshots(project="beta")) == ["snp1", "snp2", "snp4"]
        assert ids(await view.list_snapshots(project="beta", limit=1)) == ["snp1"]
        assert ids(await view.list_snapshots(project="alpha")) == ["snp3"]
        assert ids(await view.list_snapshots(project="default")) == []
        assert ids(await view.list_snapshots()) == ["snp1", "snp2", "snp3", "snp4"]
        assert (await view.load_snapshot("snp1")).project is None  # type: ignore[union-attr]
    finally:
        await view.close()
