"""A create's staging of a directory input: what a killed worker left is removed by the next
staging on the machine, whichever sandbox it is for; a live (or frozen) worker's is kept."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from sandboxer.workspaces.materialize import _fresh_staging

# A worker staging an input: its directory made as a create makes it, a file copied in,
# then the copy goes on (until the test kills or stops the process).
STAGING = """
import sys, time
from pathlib import Path
from sandboxer.workspaces.materialize import _fresh_staging
staging = _fresh_staging(Path(sys.argv[1]), sys.argv[2])
(staging / "tree" / "big").write_bytes(b"x" * 4096)
print(staging, flush=True)
time.sleep(60)
"""


def staging(root: Path, stem: str) -> tuple[subprocess.Popen[str], Path]:
    worker = subprocess.Popen(
        [sys.executable, "-c", STAGING, str(root), stem], stdout=subprocess.PIPE, text=True
    )
    assert worker.stdout is not None
    return worker, Path(worker.stdout.readline().strip())


def test_a_worker_killed_mid_staging_leaves_a_copy_the_next_staging_removes(
    tmp_path: Path,
) -> None:
    """A copy of a root's tree (or an upload) staged by a worker killed mid-create stayed
    under $SANDBOXER_HOME/staging for good unless the same sandbox's same input was staged
    again on this machine: a create given up, or retried by a worker elsewhere, left it
    (up to the upload limit each). Any staging now removes what gone workers left."""
    killed, left = staging(tmp_path, "sbxkilled01-repo")
    stopped, kept = staging(tmp_path, "sbxstopped1-repo")  # frozen mid-copy: it may wake up
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        stopped.send_signal(signal.SIGSTOP)
        assert (left / "tree" / "big").exists()
        made = _fresh_staging(tmp_path, "sbxanother1-repo")
        assert not left.exists()
        assert (kept / "tree" / "big").exists()
        assert made.is_dir()
    finally:
        for worker in (killed, stopped):
            worker.kill()
            worker.communicate()
