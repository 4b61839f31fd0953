"""Resource limits for a local sandbox with cgroups (v1 per-controller trees, or v2 unified).

Each sandbox gets its own group, ``<base>/<controller>/sandboxer/<name>`` on v1
or ``<base>/sandboxer/<name>`` on v2 (the backend names it ``<id>-<root tag>``
so that two roots on one host, e.g. parallel test runs, never share or tear
down each other's groups), created at the top of the hierarchy and not
below the worker's own (possibly nested, possibly limited) cgroup, as in
TESTBEDS. Processes are moved in by the launcher wrapper before they exec, so
everything they fork is charged too; the group is also the authoritative list
of the sandbox's processes at teardown.

A limit that cannot be applied never fails provisioning: it becomes a warning
a person can read in ``Readiness.warnings``. The limit plans are pure functions
so they can be tested without a cgroup filesystem.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sandboxer.config.profile import Resources
from sandboxer.errors import ExtensionError

__all__ = [
    "CGROUP_BASE",
    "DEFAULT_PIDS",
    "Cgroups",
    "Limit",
    "destroy",
    "detect",
    "groups_by_name",
    "join_files",
    "member_pids",
    "plan",
    "sandbox_dirs",
    "setup",
]

CGROUP_BASE = Path("/sys/fs/cgroup")
GROUP = "sandboxer"
DEFAULT_PIDS = 4096
"""Applied when a profile sets no pids limit: generous, but a fork bomb still stops."""
CPU_PERIOD_US = 100_000
V1_CONTROLLERS = ("memory", "pids", "cpu", "freezer")
"""Where a sandbox's v1 groups may be (the freezer's is made by :mod:`.freezer`, for pause)."""
_ADVICE = "run as root on a host with cgroup v1 or v2 controllers"

Version = Literal["v1", "v2"]


@dataclass(frozen=True)
class Limit:
    """One limit: the controller that enforces it and the files to write, in order."""

    controller: str
    files: tuple[tuple[str, str], ...]
    optional: frozenset[str] = frozenset()
    """Files written only if the kernel offers them (e.g. memsw needs swap accounting)."""


def plan(resources: Resources, version: Version) -> list[Limit]:
    """The limits ``resources`` asks for, plus the default pids limit."""
    limits: list[Limit] = []
    files: tuple[tuple[str, str], ...]
    if resources.memory_mb is not None:
        amount = str(resources.memory_mb * 1024 * 1024)
        if version == "v1":
            memsw = "memory.memsw.limit_in_bytes"
            files = (("memory.limit_in_bytes", amount), (memsw, amount))
            limits.append(Limit("memory", files, frozenset({memsw})))
        else:
            files = (("memory.max", amount), ("memory.swap.max", "0"))
            limits.append(Limit("memory", files, frozenset({"memory.swap.max"})))
    pids = str(resources.pids or DEFAULT_PIDS)
    limits.append(Limit("pids", (("pids.max", pids),)))
    if resources.cpu is not None:
        quota = str(max(1000, round(resources.cpu * CPU_PERIOD_US)))
        if version == "v1":
            files = (("cpu.cfs_period_us", str(CPU_PERIOD_US)), ("cpu.cfs_quota_us", quota))
        else:
            files = (("cpu.max", f"{quota} {CPU_PERIOD_US}"),)
        limits.append(Limit("cpu", files))
    return limits


def detect(base: Path = CGROUP_BASE) -> Version:
    """``v2`` when ``base`` is a unified hierarchy, otherwise ``v1`` (per-controller mounts)."""
    return "v2" if (base / "cgroup.controllers").exists() else "v1"


def _parents(base: Path) -> list[Path]:
    """Where sandboxes' groups are made: the v2 hierarchy's, or each v1 controller's."""
    return [base / GROUP, *(base / ctl / GROUP for ctl in V1_CONTROLLERS)]


def sandbox_dirs(name: str, base: Path = CGROUP_BASE) -> list[Path]:
    """Every existing cgroup directory of the group ``name`` (for teardown after a crash)."""
    return [path for path in (parent / name for parent in _parents(base)) if path.is_dir()]


def groups_by_name(base: Path = CGROUP_BASE) -> dict[str, list[Path]]:
    """Every sandbox group on this host, any root's, by name, with its directories."""
    found: dict[str, list[Path]] = {}
    for parent in _parents(base):
        try:
            entries = list(os.scandir(parent))
        except OSError:  # no such hierarchy here, or not made yet
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                found.setdefault(entry.name, []).append(Path(entry.path))
    return found


@dataclass
class Cgroups:
    """The groups created for one sandbox and the limits that could not be enforced."""

    dirs: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def join_files(self) -> list[Path]:
        return join_files(self.dirs)


def join_files(dirs: Iterable[Path | str]) -> list[Path]:
    """The file the launcher writes ``0`` to, to join each existing group in ``dirs``.

    On v1 that is ``tasks``, which moves only the writing thread (the launcher
    is a single-threaded shell, so that is all of it). The kernel then skips
    the global threadgroup lock that ``cgroup.procs`` takes, and with it the
    RCU grace period the lock waits for after an idle spell: joining nine v1
    hierarchies took 7.8 ms that way and 1.8 ms through ``tasks`` (p50, here).
    v2 has no ``tasks`` file; its ``cgroup.procs`` always takes the lock.
    """
    found = []
    for directory in map(Path, dirs):
        for name in ("tasks", "cgroup.procs"):
            if (directory / name).exists():
                found.append(directory / name)
                break
    return found


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _apply(directory: Path, limit: Limit) -> None:
    for name, value in limit.files:
        target = directory / name
        if name in limit.optional and not target.exists():
            continue
        _write(target, value)


def _not_enforced(limit: Limit, reason: str) -> str:
    return f"{limit.controller} limit not enforced: {reason}; {_ADVICE}"


def _unusable(hierarchy: Path) -> str | None:
    if not (hierarchy / "cgroup.procs").exists():
        return f"{hierarchy} is missing"
    if not os.access(hierarchy, os.W_OK):
        return f"{hierarchy} is read-only"
    return None


def setup(name: str, resources: Resources, base: Path = CGROUP_BASE) -> Cgroups:
    """Create the groups called ``name`` and write the limits; never raises for an unusable cgroupfs."""
    if detect(base) == "v2":
        return _setup_v2(name, plan(resources, "v2"), base)
    result = Cgroups()
    for limit in plan(resources, "v1"):
        hierarchy = base / limit.controller
        reason = _unusable(hierarchy)
        if reason is not None:
            result.warnings.append(_not_enforced(limit, reason))
            continue
        directory = hierarchy / GROUP / name
        try:
            directory.mkdir(parents=True, exist_ok=True)
            _apply(directory, limit)
        except OSError as exc:
            with contextlib.suppress(OSError):
                directory.rmdir()
            result.warnings.append(_not_enforced(limit, f"could not configure {directory}: {exc}"))
            continue
        result.dirs.append(directory)
    return result


def _setup_v2(name: str, limits: Sequence[Limit], base: Path) -> Cgroups:
    result = Cgroups()
    reason = _unusable(base)
    if reason is not None:
        result.warnings += [_not_enforced(limit, reason) for limit in limits]
        return result
    available = set((base / "cgroup.controllers").read_text().split())
    parent, directory = base / GROUP, base / GROUP / name
    try:
        parent.mkdir(exist_ok=True)
        for owner in (base, parent):
            for limit in limits:
                if limit.controller in available:
                    _write(owner / "cgroup.subtree_control", f"+{limit.controller}")
        directory.mkdir(exist_ok=True)
    except OSError as exc:
        result.warnings += [
            _not_enforced(limit, f"cannot create {directory}: {exc}") for limit in limits
        ]
        return result
    result.dirs.append(directory)
    for limit in limits:
        if limit.controller not in available:
            reason = f"controller {limit.controller!r} is not enabled in {base}"
            result.warnings.append(_not_enforced(limit, reason))
            continue
        try:
            _apply(directory, limit)
        except OSError as exc:
            result.warnings.append(_not_enforced(limit, f"could not configure {directory}: {exc}"))
    return result


def member_pids(dirs: Iterable[Path]) -> set[int]:
    """Every process currently in any of ``dirs``."""
    pids: set[int] = set()
    for directory in dirs:
        with contextlib.suppress(OSError):
            pids.update(int(line) for line in (directory / "cgroup.procs").read_text().split())
    pids.discard(os.getpid())
    return pids


def _kill_members(directory: Path) -> None:
    kill_file = directory / "cgroup.kill"  # v2, Linux 5.14+: kills atomically, forks included
    if kill_file.exists():
        with contextlib.suppress(OSError):
            _write(kill_file, "1")
    for pid in member_pids([directory]):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


async def destroy(dirs: Iterable[Path], *, timeout: float = 10.0) -> None:
    """Kill every process in ``dirs`` and remove them, retrying while the kernel lets go.

    Killed processes leave a group only once they have fully exited; ``rmdir``
    fails with EBUSY until then, so kill and retry until ``timeout``.
    """
    pending = list(dict.fromkeys(dirs))
    deadline = time.monotonic() + timeout
    pause = 0.002  # killed processes usually leave within a few ms; back off if they linger
    while True:
        for directory in list(pending):
            _kill_members(directory)
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                continue
            pending.remove(directory)
        if not pending:
            return
        if time.monotonic() > deadline:
            names = ", ".join(str(path) for path in pending)
            raise ExtensionError(
                f"could not remove cgroup(s) {names}: processes {sorted(member_pids(pending))} "
                f"did not exit within {timeout:.0f}s; kill them and run the teardown again",
                extension="ext.local",
            )
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.1)
