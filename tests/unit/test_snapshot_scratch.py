"""A snapshot's scratch directory: what a killed worker left is removed, a live one's kept."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from sandboxer.workers.snapshot_job import scratch_for


def test_what_a_dead_worker_left_is_removed_and_a_running_ones_kept(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    frozen = subprocess.Popen(["sleep", "30"])  # a worker stopped mid-copy: it may wake up
    try:
        left = tmp_path / f"snapshot-snpleft0001-{gone.pid}"
        (left / "tree").mkdir(parents=True)
        (left / "tree" / "big").write_bytes(b"x" * 1024)
        kept = tmp_path / f"snapshot-snpkept0001-{frozen.pid}"
        kept.mkdir()
        scratch = scratch_for(tmp_path, "snpnew00001")
        assert scratch == tmp_path / f"snapshot-snpnew00001-{os.getpid()}"
        assert list(scratch.iterdir()) == []
        assert not left.exists()
        assert kept.exists()
        (scratch / "tree").mkdir()
        assert list(scratch_for(tmp_path, "snpnew00001").iterdir()) == []  # fresh each time
    finally:
        frozen.kill()
        frozen.wait()
