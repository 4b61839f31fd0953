"""A snapshot's scratch directory: what a killed worker left is removed, a live one's kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sandboxer.extensions.base import FoundSandbox
from sandboxer.incarnation import incarnation
from sandboxer.workers.extension_worker import ExtensionWorker
from sandboxer.workers.snapshot_job import scratch_for
from sandboxer.workspaces.limits import ArchiveLimits
from sandboxer.workspaces.materialize import DirectoryInputs

# A worker's snapshot copy: its scratch made as the job makes it, a file copied in, then
# the copy goes on (until the test kills or stops the process).
COPYING = """
import sys, time
from pathlib import Path
from sandboxer.workers.snapshot_job import scratch_for
scratch = scratch_for(Path(sys.argv[1]), sys.argv[2])
(scratch / "tree").mkdir()
(scratch / "tree" / "big").write_bytes(b"x" * 4096)
print(scratch, flush=True)
time.sleep(60)
"""


def copying(staging: Path, snapshot_id: str) -> tuple[subprocess.Popen[str], Path]:
    worker = subprocess.Popen(
        [sys.executable, "-c", COPYING, str(staging), snapshot_id],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout is not None
    return worker, Path(worker.stdout.readline().strip())


class Listless:
    """An extension with nothing to reconcile: the worker's start only sweeps."""

    id = "ext.none"

    async def list_sandboxes(self) -> Sequence[FoundSandbox]:
        return []


def starting_worker(staging: Path) -> ExtensionWorker:
    none: Any = None  # the bus and the log: a start with nothing to reconcile reads neither
    extension: Any = Listless()
    inputs = DirectoryInputs(none, roots=(), staging_root=staging, limits=ArchiveLimits())
    return ExtensionWorker(none, none, none, extension, directories=inputs)


async def test_a_worker_killed_mid_snapshot_leaves_scratch_the_next_start_removes(
    tmp_path: Path,
) -> None:
    """No snapshot needs to be taken again for it to go: the worker's start sweeps."""
    killed, left = copying(tmp_path, "snpkilled0001")
    stopped, kept = copying(tmp_path, "snpstopped001")  # frozen mid-copy: it may wake up
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        stopped.send_signal(signal.SIGSTOP)
        assert (left / "tree" / "big").exists()
        await starting_worker(tmp_path).reconcile()
        assert not left.exists()
        assert (kept / "tree" / "big").exists()
    finally:
        for worker in (killed, stopped):
            worker.kill()
            worker.communicate()  # and its pipe closed


async def test_a_dead_workers_scratch_under_a_pid_now_live_is_removed(tmp_path: Path) -> None:
    """After a restart the dead worker's pid is often the new worker's own (a container's)
    or another live process's: by pid alone its scratch looked live for good."""
    other = subprocess.Popen(["sleep", "30"])
    try:
        planted = [
            tmp_path / f"snapshot-snpmine000001-{os.getpid()}",  # named before incarnations
            tmp_path / f"snapshot-snpmine000002-{os.getpid()}-1@00000000",
            tmp_path / f"snapshot-snpother00001-{other.pid}-1@00000000",
        ]
        live = tmp_path / f"snapshot-snpother00002-{other.pid}-{incarnation(other.pid)}"
        for directory in [*planted, live]:
            (directory / "tree").mkdir(parents=True)
        await starting_worker(tmp_path).reconcile()
        assert [path for path in planted if path.exists()] == []
        assert live.exists()
    finally:
        other.kill()
        other.wait()


def test_what_a_dead_worker_left_is_removed_and_a_running_ones_kept(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    frozen = subprocess.Popen(["sleep", "30"])  # a worker stopped mid-copy: it may wake up
    try:
        left = tmp_path / f"snapshot-snpleft0001-{gone.pid}-{incarnation(os.getpid())}"
        (left / "tree").mkdir(parents=True)
        (left / "tree" / "big").write_bytes(b"x" * 1024)
        legacy = tmp_path / f"snapshot-snpleft0002-{gone.pid}"  # named before incarnations
        legacy.mkdir()
        kept = tmp_path / f"snapshot-snpkept0001-{frozen.pid}-{incarnation(frozen.pid)}"
        kept.mkdir()
        kept_legacy = tmp_path / f"snapshot-snpkept0002-{frozen.pid}"
        kept_legacy.mkdir()
        scratch = scratch_for(tmp_path, "snpnew00001")
        assert (
            scratch == tmp_path / f"snapshot-snpnew00001-{os.getpid()}-{incarnation(os.getpid())}"
        )
        assert list(scratch.iterdir()) == []
        assert not left.exists()
        assert not legacy.exists()
        assert kept.exists()
        assert kept_legacy.exists()
        (scratch / "tree").mkdir()
        assert list(scratch_for(tmp_path, "snpnew00001").iterdir()) == []  # fresh each time
    finally:
        frozen.kill()
        frozen.wait()
