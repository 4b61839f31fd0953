"""Scratch directories named with the process that made them: its pid and incarnation.

A worker killed mid-copy (kill -9, a reboot) never runs its clean-up, and what
it staged can be gigabytes. With the process in the name, a later process can
tell the leftovers of processes no longer running from the work of live ones,
and remove them (a frozen process's are kept: it may wake up and finish). The
pid alone is not enough: after a restart (a container's worker, a reboot) the
dead worker's pid is often the new worker's own, or another live process's, and
what it left was kept for good; the pid's start time and the boot
(:mod:`sandboxer.incarnation`) say which process it was. The snapshot job's scratch and
the files service's staging both use this, and both workers sweep at start. What
is swept was shaped by a sandbox or a client (a tar of a directory nested two
thousand deep): it is removed at any depth (:mod:`sandboxer.tree_removal`), where
``shutil.rmtree`` raised RecursionError, ``ignore_errors`` notwithstanding, and the
worker did not start.
"""

from __future__ import annotations

import os
from pathlib import Path

from sandboxer.incarnation import incarnation
from sandboxer.tree_removal import remove_tree

__all__ = ["pid_scratch", "sweep_dead"]


def pid_scratch(root: Path, stem: str) -> Path:
    """A fresh, empty directory ``root/<stem>-<pid>-<incarnation>`` (mode 0700) of this
    process."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    pid = os.getpid()
    scratch = root / f"{stem}-{pid}-{incarnation(pid)}"
    remove_tree(scratch, ignore_errors=True)
    scratch.mkdir(mode=0o700)
    return scratch


def sweep_dead(root: Path, pattern: str = "*") -> None:
    """Remove the entries of ``root`` matching ``pattern`` that a process no longer running
    made: their names end in ``-<pid>-<incarnation>`` (or, made before the incarnation was
    in them, ``-<pid>``). Names without a pid are left alone."""
    for leftover in root.glob(pattern):
        if _made_by_a_gone_process(leftover.name):
            remove_tree(leftover, ignore_errors=True)


def _made_by_a_gone_process(name: str) -> bool:
    head, dash, last = name.rpartition("-")
    recorded = None
    if dash and "@" in last:
        recorded = last
        head, dash, last = head.rpartition("-")
    if not dash or not last.isdigit():
        return False
    pid = int(last)
    if pid == os.getpid():
        # A name without an incarnation is an earlier process's (this one makes none).
        return recorded != incarnation(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OverflowError:
        return False  # no pid at all: not ours to remove
    except PermissionError:
        pass  # another user's process: alive, but perhaps not the one that made it
    return recorded is not None and recorded != incarnation(pid)
