"""sandboxer/extensions/ssh_exec_stop.py: a given-up exec runs its stop, and only then; the
stop never hides why the exec ended. No host: ``run`` and ``stop`` are plain coroutines."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from sandboxer.extensions.ssh_exec_stop import MARKER_NAME, kill_argv, new_marker, stoppable
from tests.conftest import require_tool


class Recorder:
    def __init__(self, *, stop_fails: bool = False) -> None:
        self.markers: list[tuple[str, str]] = []
        self.stops: list[list[str]] = []
        self.stop_fails = stop_fails

    async def stop(self, kill: list[str]) -> object:
        self.stops.append(kill)
        if self.stop_fails:
            raise OSError("host gone")
        return None


async def test_a_command_that_ends_is_not_stopped() -> None:
    seen = Recorder()

    async def run(name: str, value: str) -> int:
        seen.markers.append((name, value))
        return 3

    assert await stoppable(run, seen.stop, what="t") == 3
    assert seen.stops == []
    [(name, value)] = seen.markers
    assert name == MARKER_NAME
    assert len(value) == 32


async def test_a_cancelled_command_is_stopped_by_its_own_marker() -> None:
    seen = Recorder()
    began = asyncio.Event()

    async def run(name: str, value: str) -> int:
        seen.markers.append((name, value))
        began.set()
        await asyncio.Event().wait()
        return 0

    task = asyncio.create_task(stoppable(run, seen.stop, what="t"))
    await began.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen.stops == [kill_argv(*seen.markers[0])]
    assert seen.stops[0][-1] == "=".join(seen.markers[0])


async def test_a_timeout_around_it_still_reads_as_a_timeout() -> None:
    seen = Recorder()

    async def run(_name: str, _value: str) -> int:
        await asyncio.sleep(60)
        return 0

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await stoppable(run, seen.stop, what="t")
    assert len(seen.stops) == 1


async def test_a_failing_stop_does_not_hide_the_error() -> None:
    seen = Recorder(stop_fails=True)

    async def run(_name: str, _value: str) -> int:
        raise ValueError("output sink failed")

    with pytest.raises(ValueError, match="output sink failed"):
        await stoppable(run, seen.stop, what="t")
    assert len(seen.stops) == 1


def test_two_execs_get_different_markers() -> None:
    assert new_marker() != new_marker()


# In a fresh pid namespace, as in a container: the next pid is 9, so the marked shell is 9
# and its `sleep` 10, which comes first in /proc's order ("10" < "9"). Nothing else forks
# before the stop (the wait for pid 10 is the shell's own), so those are the pids.
IN_A_CONTAINER = r"""
echo 8 > /proc/sys/kernel/ns_last_pid
SANDBOXER_EXEC_ID=marked sh -c 'sleep 30; echo late > "$1"' sh "$LATE" &
while [ ! -e /proc/10 ]; do :; done
"$@"
sleep 0.3
"""


def test_the_stop_leaves_no_marked_shell_to_run_its_next_command(tmp_path: Path) -> None:
    """The stop killed each marked process as it came to it in /proc's order: in a container
    the shell's child came first, and the shell ran its next command before its own turn
    (a killed worker's `sleep 27; echo late > f` wrote f). Now every one is stopped first."""
    unshare = require_tool("unshare", "util-linux")
    late = tmp_path / "late"
    stop = kill_argv("SANDBOXER_EXEC_ID", "marked")
    done = subprocess.run(
        [unshare, "--pid", "--fork", "--mount-proc", "sh", "-c", IN_A_CONTAINER, "sh", *stop],
        env={"PATH": os.environ["PATH"], "LATE": str(late)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert not late.exists(), "a marked shell ran on after its child was killed"


# The marked `sleep` runs as the same unprivileged user as the stop; every other process of
# the machine (this test's among them) belongs to root, whose environments it cannot read.
AS_A_USER = r"""
SANDBOXER_EXEC_ID=marked sleep 30 &
p=$!
until tr '\000' '\n' < /proc/$p/environ | grep -qxF SANDBOXER_EXEC_ID=marked; do :; done
"$@"
stopped=$?
wait "$p"
[ $? -eq 137 ] || exit 9
exit "$stopped"
"""


def test_the_stop_run_by_a_user_says_nothing_of_processes_it_cannot_read() -> None:
    """An SSH user who is not root cannot read other users' environments. Every pass met
    them all, and the shell printed "cannot open /proc/N/environ" for each one: the
    redirection failed before the command's own `2>/dev/null` was in place."""
    setpriv = require_tool("setpriv", "util-linux")
    stop = kill_argv("SANDBOXER_EXEC_ID", "marked")
    nobody = ["--reuid=65534", "--regid=65534", "--clear-groups"]
    done = subprocess.run(
        [setpriv, *nobody, "sh", "-c", AS_A_USER, "sh", *stop],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
