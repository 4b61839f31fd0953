"""Scratch directories named with the pid of the worker process that made them.

A worker killed mid-copy (kill -9, a reboot) never runs its clean-up, and what
it staged can be gigabytes. With the pid in the name, a later process can tell
the leftovers of processes no longer running from the work of live ones, and
remove them (a frozen process's are kept: it may wake up and finish). The
snapshot job's scratch and the files service's staging both use this.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["pid_scratch", "sweep_dead"]


def pid_scratch(root: Path, stem: str) -> Path:
    """A fresh, empty directory ``root/<stem>-<pid>`` (mode 0700) of this process."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    scratch = root / f"{stem}-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(mode=0o700)
    return scratch


def sweep_dead(root: Path, pattern: str = "*") -> None:
    """Remove the entries of ``root`` matching ``pattern`` that a process no longer running
    made: their names end in ``-<pid>``. Names without a pid are left alone."""
    for leftover in root.glob(pattern):
        _stem, dash, pid = leftover.name.rpartition("-")
        if dash and pid.isdigit() and int(pid) != os.getpid() and _gone(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False  # another user's process, or no pid at all: not ours to remove
    return False
