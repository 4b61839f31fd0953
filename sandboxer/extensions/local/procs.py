"""Host process facts read from /proc: identity that survives pid reuse, liveness, killing.

A pid alone does not identify a process across a worker restart: the kernel
reuses pids. Every pid ext.local records is paired with the process's start
time (``/proc/<pid>/stat`` field 22, clock ticks since boot), and a process
counts as "ours" only while both match. Zombies count as dead: orphans are
reparented to PID 1, which on some hosts reaps them only every few seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
from dataclasses import dataclass

__all__ = [
    "ProcessRef",
    "children_of",
    "command_name",
    "kill",
    "owning_user_namespace",
    "reap_if_child",
    "start_time",
    "stat_of",
    "uids_running",
]

_NS_GET_USERNS = 0xB701  # ioctl from <linux/nsfs.h>: the user namespace owning a namespace


@dataclass(frozen=True)
class _Stat:
    state: str
    ppid: int
    start_time: int


def stat_of(pid: int) -> _Stat | None:
    """State letter and start time of ``pid``, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself contain ") ".
    fields = raw[raw.rfind(")") + 2 :].split()
    if len(fields) < 20:
        return None
    return _Stat(state=fields[0], ppid=int(fields[1]), start_time=int(fields[19]))


def start_time(pid: int) -> int | None:
    """``pid``'s start time (clock ticks since boot): with the pid, which process it is.
    None if there is no such process."""
    found = stat_of(pid)
    return None if found is None else found.start_time


@dataclass(frozen=True)
class ProcessRef:
    """A pid plus the start time it had when recorded."""

    pid: int
    start_time: int

    @classmethod
    def of(cls, pid: int) -> ProcessRef | None:
        started = start_time(pid)
        return None if started is None else cls(pid, started)

    def same_process(self) -> bool:
        """The recorded process still exists (zombie or not): the pid was not reused."""
        stat = stat_of(self.pid)
        return stat is not None and stat.start_time == self.start_time

    def alive(self) -> bool:
        """The recorded process exists, is not a zombie, and is not a reused pid."""
        stat = stat_of(self.pid)
        return stat is not None and stat.start_time == self.start_time and stat.state not in "ZX"


def kill(ref: ProcessRef) -> None:
    """SIGKILL ``ref`` if it is still the recorded process."""
    if ref.same_process():
        with contextlib.suppress(ProcessLookupError):
            os.kill(ref.pid, signal.SIGKILL)
        reap_if_child(ref.pid)


def reap_if_child(pid: int) -> None:
    """Collect ``pid``'s exit status if it happens to be our child (e.g. we are a subreaper)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def owning_user_namespace(pid: int) -> int:
    """An open fd (close-on-exec) to the user namespace that owns ``pid``'s ipc namespace."""
    ipc = os.open(f"/proc/{pid}/ns/ipc", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fcntl.ioctl(ipc, _NS_GET_USERNS)
    finally:
        os.close(ipc)


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (its main thread's), scanning /proc if the kernel lacks the list."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(child) for child in handle.read().split()]
    except FileNotFoundError:
        if not os.path.exists(f"/proc/{pid}"):
            return []
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = stat_of(int(entry))
            if stat is not None and stat.ppid == pid:
                children.append(int(entry))
    return children


def command_name(pid: int) -> str | None:
    """``/proc/<pid>/comm``: the name of the program ``pid`` runs now, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().strip()
    except OSError:
        return None


def uids_running() -> set[int]:
    """Every uid a process of this machine runs as (real, effective, saved or filesystem),
    from ``/proc/<pid>/status``: a uid in none is used by no process."""
    uids: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as handle:
                lines = handle.read().splitlines()
        except OSError:  # gone meanwhile
            continue
        for line in lines:
            if line.startswith("Uid:"):
                uids.update(int(value) for value in line.split()[1:])
                break
    return uids
