"""ext.local's commands and their session keyrings, with real processes and the real kernel
(docs/ext-local.md#users-and-keyrings). A session keyring is joined per thread, so these
need no root: any process may join an anonymous one."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import sys
import threading
import time
from pathlib import Path
from typing import Literal

import pytest

from sandboxer.errors import ExtensionError
from sandboxer.extensions.local import keyrings
from sandboxer.extensions.local.run import run_streaming

pytestmark = pytest.mark.integration

KEY_SPEC_SESSION_KEYRING = -3
# Prints the serial number of its own session keyring (keyrings.py is standard library only).
SESSION_KEYRING = [
    sys.executable, "-I", "-S", "-c",
    f"import sys; sys.path.insert(0, {str(keyrings.SCRIPT.parent)!r}); import keyrings; "
    f"print(keyrings.keyctl(keyrings.KEYCTL_GET_KEYRING_ID, {KEY_SPEC_SESSION_KEYRING}, 0))",
]  # fmt: skip


async def test_no_fork_while_a_command_starts_inherits_its_session_keyring() -> None:
    """Another task's fork on the loop thread while a command is starting (another sandbox's
    holder, a helper) gets none of the command's session keyring: the two would otherwise
    share a channel through it. Deterministic: the other fork is made in the first loop
    iteration after the command's own first step, which forks it."""
    said: list[bytes] = []

    async def keep(_name: Literal["stdout", "stderr"], chunk: bytes) -> None:
        said.append(chunk)

    command = asyncio.create_task(
        run_streaming(SESSION_KEYRING, keep, own_session_keyring=True, drain_grace=5)
    )
    await asyncio.sleep(0)  # the command's first step runs: it joins a keyring and forks
    other = await asyncio.create_subprocess_exec(
        *SESSION_KEYRING, stdout=asyncio.subprocess.PIPE
    )  # forked at once, in this step
    other_said, _ = await other.communicate()
    assert await command == 0
    commands = int(b"".join(said))
    assert commands != int(other_said), "a fork during the command's start shares its keyring"
    # Nor does the loop's thread keep it, for what it starts later.
    assert keyrings.keyctl(keyrings.KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0) != commands


async def test_a_command_whose_exit_cannot_be_awaited_is_killed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a pidfd (a kernel older than 5.3) the command is killed and reaped at once,
    and the error says what ext.local needs, rather than a command left running unwatched."""

    def no_pidfd(_pid: int, _flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    start = time.monotonic()
    with pytest.raises(ExtensionError, match=r"Linux 5\.3 or later"):
        await run_streaming(["sleep", "30"], _ignore, own_session_keyring=True)
    assert time.monotonic() - start < 5  # not waited out: killed


FREEZER = Path("/sys/fs/cgroup/freezer")


@pytest.mark.skipif(
    os.geteuid() != 0 or not (FREEZER / "cgroup.procs").exists(),
    reason="needs root and the cgroup v1 freezer",
)
async def test_a_killed_command_that_does_not_go_at_once_does_not_hold_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When its exit cannot be watched, the killed command is awaited without holding the
    event loop: here it sits frozen by the real cgroup freezer (a paused sandbox's state),
    where SIGKILL lands only once it is thawed, 1.5 s later. The loop keeps running
    meanwhile (``popen.wait()`` on it held every sandbox's work for the 1.5 s)."""
    group = FREEZER / "sandboxer" / f"test-spawn-{os.getpid()}-{time.monotonic_ns()}"
    group.mkdir(parents=True)
    real_pidfd_open = os.pidfd_open

    def frozen_then_no_pidfd(pid: int, _flags: int = 0) -> int:
        (group / "cgroup.procs").write_text(str(pid))
        (group / "freezer.state").write_text("FROZEN")
        while (group / "freezer.state").read_text().strip() != "FROZEN":
            time.sleep(0.001)
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", frozen_then_no_pidfd)
    thaw = threading.Timer(1.5, lambda: (group / "freezer.state").write_text("THAWED"))
    thaw.start()
    start = time.monotonic()
    ticks = [start]

    async def tick() -> None:
        while True:
            await asyncio.sleep(0.01)
            ticks.append(time.monotonic())

    ticker = asyncio.create_task(tick())
    try:
        with pytest.raises(ExtensionError, match=r"Linux 5\.3 or later"):
            await run_streaming(["sleep", "30"], _ignore, own_session_keyring=True)
    finally:
        ticker.cancel()
        thaw.join()
        monkeypatch.setattr(os, "pidfd_open", real_pidfd_open)
        group.rmdir()
    ticks.append(time.monotonic())
    assert ticks[-1] - start > 1.0  # the command was awaited for as long as it was frozen
    stood = max(later - earlier for earlier, later in itertools.pairwise(ticks))
    # The fault held it for the whole 1.5 s freeze; a loaded machine (the suite's other
    # workers) can hold it a few hundred ms, which is not what this is about.
    assert stood < 1.0, f"the event loop stood still for {stood:.2f}s"


async def test_a_command_whose_pidfd_the_loop_cannot_watch_is_killed_and_the_pidfd_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An event loop that cannot watch the pidfd (one without ``add_reader``, an epoll out
    of room) is the other way the exit cannot be awaited: the command is killed and
    reaped, and its pidfd closed, not left open for the worker's lifetime."""
    opened: list[tuple[int, int]] = []
    real_pidfd_open = os.pidfd_open

    def recorded(pid: int, flags: int = 0) -> int:
        fd = real_pidfd_open(pid, flags)
        opened.append((pid, fd))
        return fd

    def cannot_watch(*_args: object) -> None:
        raise NotImplementedError

    monkeypatch.setattr(os, "pidfd_open", recorded)
    monkeypatch.setattr(asyncio.get_running_loop(), "add_reader", cannot_watch)
    before = _pidfds()
    with pytest.raises(ExtensionError, match="cannot watch its pidfd"):
        await run_streaming(["sleep", "30"], _ignore, own_session_keyring=True)
    [(pid, _fd)] = opened
    assert _pidfds() == before, "the pidfd was left open"
    with pytest.raises(ProcessLookupError):  # killed and reaped, not running unwatched
        os.kill(pid, 0)


def _pidfds() -> set[int]:
    fds = Path("/proc/self/fd")
    found = set()
    for entry in fds.iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(entry) == "anon_inode:[pidfd]":
                found.add(int(entry.name))
    return found


async def _ignore(_name: Literal["stdout", "stderr"], _chunk: bytes) -> None:
    pass
