"""An extension worker's snapshot job: copy the workspace out, store it, record the outcome.

Two appends, the second reacting to the first: the snapshot records
``created`` (or ``failed``), then the sandbox records ``snapshot_finished``,
which releases a teardown that a destroy decided meanwhile was waiting for;
that job is published here. A redelivered job finds the outcome recorded and
only completes the appends after it.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from nats.js import JetStreamContext

from sandboxer import subjects
from sandboxer.bus.event_store import EventStore
from sandboxer.bus.publish import is_unavailability
from sandboxer.domain.bucket_objects import DEFAULT_OBJECT_GRACE
from sandboxer.domain.sandbox_snapshots import FinishSnapshot
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.domain.snapshot_decide import RecordSnapshotFailed, RecordSnapshotStored
from sandboxer.domain.snapshot_objects import owned_by
from sandboxer.errors import BusError
from sandboxer.events.types import SYSTEM_ACTOR
from sandboxer.extensions.base import Extension
from sandboxer.extensions.capabilities import Snapshotter, TimeoutKeeper
from sandboxer.scratch import pid_scratch, sweep_dead
from sandboxer.workers import deciding
from sandboxer.workers.backend_for import backend_for
from sandboxer.workers.deciding import apply_snapshot
from sandboxer.workers.job_dispatch import dispatch_job
from sandboxer.workers.jobs import Job
from sandboxer.workers.provider_expiry import follow_expiry
from sandboxer.workers.snapshot_objects import collect_orphaned_objects
from sandboxer.workspaces.limits import ArchiveLimits
from sandboxer.workspaces.refs import object_name
from sandboxer.workspaces.upload import upload_directory

__all__ = ["SnapshotJob"]

log = logging.getLogger(__name__)

Explain = Callable[[BaseException], str]
"""Turns an exception into the reason recorded (the worker's redacting formatter)."""


SCRATCH = "snapshot-*-*"
"""The snapshots' scratch directories under the staging root."""


def scratch_for(staging_root: Path, snapshot_id: str) -> Path:
    """A fresh scratch directory for this process's copy of a snapshot, named with its pid
    and incarnation (:mod:`.scratch`).

    A worker killed mid-snapshot (kill -9, a reboot) never runs its clean-up, and a copy
    of a workspace can be a gigabyte: what processes that are no longer running left here,
    for any snapshot, is removed first (as at the worker's start). A frozen worker's copy
    is left alone: it may wake up and finish it."""
    sweep_dead(staging_root, SCRATCH)
    return pid_scratch(staging_root, f"snapshot-{snapshot_id}")


class SnapshotJob:
    def __init__(
        self,
        js: JetStreamContext,
        store: EventStore,
        extension: Extension,
        *,
        staging_root: Path,
        limits: ArchiveLimits,
        explain: Explain,
        object_grace: float = DEFAULT_OBJECT_GRACE,
    ) -> None:
        self._js = js
        self._store = store
        self._extension = extension
        self._staging_root = staging_root
        self._limits = limits
        self._explain = explain
        self._object_grace = object_grace

    async def sweep(self) -> None:
        """At the worker's start: remove the scratch that workers no longer running left. A
        worker killed mid-snapshot left its copy for the next snapshot taken here to remove,
        and when none came (or the restarted worker had the dead one's pid) it stayed. Then
        the objects in the bucket that nothing holds (a killed job may have stored one)."""
        await asyncio.to_thread(sweep_dead, self._staging_root, SCRATCH)
        await self.collect()

    async def run(self, job: Job, sandbox: SandboxState, *, redelivered: bool = False) -> None:
        """Take the snapshot unless its outcome is recorded, then release the sandbox.
        ``redelivered``: an earlier delivery of this job may have stored an object and died
        before recording it; once the outcome is, what that one stored is collected."""
        assert job.snapshot_id is not None
        snapshot = (await self._store.load_snapshot(job.snapshot_id)).state
        if snapshot.status == "new":
            # The control worker appends `requested` before it publishes this job: a read
            # that misses it is behind. Retried, and recorded as failed if it stays missing.
            raise BusError(f"snapshot {job.snapshot_id}: its requested event is not readable yet")
        if snapshot.status == "requested":
            outcome = await self._take(job, sandbox)
            snapshot = (await apply_snapshot(self._store, job.snapshot_id, outcome))[0].state
        await self.finish(job, "failed" if snapshot.status == "failed" else "created")
        if redelivered:
            await self.collect()

    async def give_up(self, job: Job, exc: BaseException) -> None:
        """The job kept failing: the snapshot failed, and the sandbox is released. A snapshot
        stored before the job ran out of deliveries (its sandbox's append kept failing) stays
        ``created``, and the sandbox's ``snapshot_finished`` says so, as :meth:`run`'s does:
        it is what the snapshot command's caller is answered with."""
        assert job.snapshot_id is not None
        reason = f"worker error: {self._explain(exc)}"
        snapshot = (
            await apply_snapshot(
                self._store,
                job.snapshot_id,
                RecordSnapshotFailed(job_id=job.job_id, reason=reason),
            )
        )[0].state
        # Deleted: it was created first. New (its requested event never read): failed.
        await self.finish(job, "created" if snapshot.status in {"created", "deleted"} else "failed")
        await self.collect()  # what a delivery stored before it failed

    async def collect(self) -> None:
        """Remove the bucket's objects nothing holds (:mod:`.snapshot_objects`): the leftovers
        of attempts that stored an object and never recorded it, and the uploads, copies'
        archives and stray chunks unheld past the grace period. Best effort: a collection
        that fails is taken again by the next (the leak sweep's, the next start's)."""
        try:
            await collect_orphaned_objects(self._js, self._store, grace=self._object_grace)
        except Exception:
            log.warning("collecting orphaned snapshot objects failed", exc_info=True)

    async def finish(self, job: Job, outcome: str) -> None:
        assert job.snapshot_id is not None
        snapshot = (await self._store.load_snapshot(job.snapshot_id)).state
        loaded, _ = await deciding.apply(
            self._store,
            job.sandbox_id,
            FinishSnapshot(
                command_id=snapshot.created_by or job.job_id,
                actor=snapshot.actor or SYSTEM_ACTOR,
                job_id=job.job_id,
                snapshot_id=job.snapshot_id,
                outcome="failed" if outcome == "failed" else "created",
            ),
        )
        await dispatch_job(self._js, loaded)
        if isinstance(self._extension, TimeoutKeeper):  # an extension during the snapshot
            keyed = await backend_for(self._store, self._extension, loaded.state)
            await follow_expiry(keyed, loaded.state, self._explain)

    async def _take(
        self, job: Job, sandbox: SandboxState
    ) -> RecordSnapshotStored | RecordSnapshotFailed:
        if not isinstance(self._extension, Snapshotter):
            return RecordSnapshotFailed(
                job_id=job.job_id,
                reason=f"{self._extension.id} does not take snapshots "
                "(its declaration has no capabilities.snapshot)",
            )
        scratch: Path | None = None
        try:
            made = await asyncio.to_thread(
                scratch_for, self._staging_root, job.snapshot_id or job.job_id
            )
            scratch, tree = made, made / "tree"
            tree.mkdir()
            backend = await backend_for(self._store, self._extension, sandbox)  # BYOK
            left_out = await backend.snapshot_workspace(job.sandbox_id, tree, host=sandbox.host)
            # No excludes: a snapshot is the whole workspace (secrets never enter it). The
            # archive is packed under the scratch directory too, so one removal takes both.
            # Marked with the snapshot's id: should this delivery die before the outcome is
            # recorded, the object is known for whose it is (domain/snapshot_objects.py).
            uploaded = await upload_directory(
                self._js,
                tree,
                limits=self._limits,
                workdir=scratch,
                headers=owned_by(job.snapshot_id or job.job_id),
            )
        except Exception as exc:
            if is_unavailability(exc):
                raise  # the bus failed, not the snapshot: the job is retried
            reason = self._explain(exc)
            if scratch is not None:  # the worker's staging path means nothing to the user
                reason = reason.replace(f"{scratch / 'tree'}/", "").replace(
                    str(scratch / "tree"), "the workspace"
                )
            log.warning("snapshot %s of %s failed: %s", job.snapshot_id, job.sandbox_id, reason)
            return RecordSnapshotFailed(job_id=job.job_id, reason=reason)
        finally:
            if scratch is not None:
                await asyncio.to_thread(shutil.rmtree, scratch, True)
        return RecordSnapshotStored(
            job_id=job.job_id,
            bucket=subjects.WORKSPACES_BUCKET,
            object=object_name(uploaded.sha256),
            size=uploaded.size,
            sha256=uploaded.sha256,
            # Bounded lines, whatever the sandbox held: an event has a size limit.
            warnings=left_out.warnings() if left_out is not None else (),
        )
