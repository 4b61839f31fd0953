"""Freezing every process of a local sandbox, for pause and resume.

The kernel's freezer stops a whole cgroup at once, forks included, and the
processes keep their memory, files and sockets; nothing inside can notice or
resist it. ext.local already puts the holder and every exec'd process into
the sandbox's own cgroups before they run (:mod:`.cgroups`), so freezing the
group freezes the sandbox:

* cgroup v1: a group of the ``freezer`` controller,
  ``<base>/freezer/sandboxer/<name>``, made here at provision time beside
  the limit groups; ``FROZEN`` or ``THAWED`` is written to its
  ``freezer.state``, which reads ``FREEZING`` until every task has stopped;
* cgroup v2: the sandbox's unified group has ``cgroup.freeze`` (``1``/``0``),
  and ``cgroup.events`` says ``frozen 1`` once it has taken effect.

Either way the change is asynchronous, so both directions wait until the
kernel reports it settled. A freeze that does not settle in time is undone,
so a failed pause never leaves a half-frozen sandbox.

The v1 freezer walks the group's tasks once per write of ``FROZEN``, and a
task forked while it walks can escape the walk: the group then reads
``FREEZING`` until something writes ``FROZEN`` again. A shell forking in a
loop (a build, a test runner) hits that often: on this project's machines one
write left 7 of 40 such groups unfrozen after 2 s. So a v1 freeze writes
``FROZEN`` again while it waits, and now and then thaws for a moment first so
that the forks in flight finish (runc does the same). v2 has no such race.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterable
from pathlib import Path

from sandboxer.domain.found import Frozen
from sandboxer.errors import ExtensionError

__all__ = [
    "SETTLE_TIMEOUT",
    "create_group",
    "find_control",
    "freeze",
    "how_frozen",
    "is_frozen",
    "thaw",
    "thaw_now",
]

SETTLE_TIMEOUT = 10.0
"""Seconds a freeze or thaw may take to settle (a task in uninterruptible sleep delays it)."""
V1_STATE = "freezer.state"
V1_AGAIN_EVERY = 0.005
"""Seconds at most between writes of ``FROZEN`` while a v1 group reads ``FREEZING``."""
V1_THAW_EVERY = 50
"""Every so many writes, a v1 freeze thaws the group for :data:`V1_THAW_FOR` seconds first."""
V1_THAW_FOR = 0.01
V2_FREEZE = "cgroup.freeze"
V1_FROZEN: dict[str, Frozen] = {"FROZEN": "all", "THAWED": "none"}
"""How much of a v1 group each settled state says is frozen (``FREEZING``: part)."""


def create_group(name: str, base: Path, group: str) -> tuple[Path | None, str | None]:
    """Make the sandbox's v1 freezer group; (its directory, None) or (None, why not).

    On cgroup v2 nothing is made (the unified group is the freezer) and (None, None)
    comes back. Like a limit, a freezer that cannot be made never fails provisioning:
    the sandbox works, only pausing it will be refused with the reason.
    """
    if (base / "cgroup.controllers").exists():
        return None, None
    hierarchy = base / "freezer"
    if not (hierarchy / "cgroup.procs").exists() or not os.access(hierarchy, os.W_OK):
        return None, f"pause unavailable: {hierarchy} is missing or read-only"
    directory = hierarchy / group / name
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return None, f"pause unavailable: could not create {directory}: {exc}"
    return directory, None


def find_control(dirs: Iterable[Path]) -> Path | None:
    """The one of a sandbox's cgroup directories that freezes it, if any."""
    for directory in dirs:
        if (directory / V1_STATE).exists() or (directory / V2_FREEZE).exists():
            return directory
    return None


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def is_frozen(directory: Path) -> bool:
    """Whether the group is frozen, or on its way (a v1 ``FREEZING`` counts)."""
    v1 = directory / V1_STATE
    if v1.exists():
        return v1.read_text().strip() != "THAWED"
    return (directory / V2_FREEZE).read_text().strip() == "1"


def how_frozen(directory: Path) -> Frozen:
    """How much of the group is frozen: ``all`` once the freeze took effect, ``none`` when it
    is thawed, ``part`` while a freeze is asked for but not settled (v1 ``FREEZING``), or a
    thaw is under way."""
    v1 = directory / V1_STATE
    if v1.exists():
        return V1_FROZEN.get(v1.read_text().strip(), "part")
    asked = (directory / V2_FREEZE).read_text().strip() == "1"
    frozen = "frozen 1" in (directory / "cgroup.events").read_text().split("\n")
    if asked and frozen:
        return "all"
    return "none" if not asked and not frozen else "part"


def _settled(directory: Path, frozen: bool) -> bool:
    return how_frozen(directory) == ("all" if frozen else "none")


def _request(directory: Path, frozen: bool) -> None:
    if (directory / V1_STATE).exists():
        _write(directory / V1_STATE, "FROZEN" if frozen else "THAWED")
    else:
        _write(directory / V2_FREEZE, "1" if frozen else "0")


async def _until_settled(directory: Path, frozen: bool, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.001  # a few milliseconds for a handful of idle processes
    again = frozen and (directory / V1_STATE).exists()
    asked = 0
    while not _settled(directory, frozen):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(delay)
        if again:  # the v1 walk missed a task forked meanwhile (the module's docstring)
            asked += 1
            if asked % V1_THAW_EVERY == 0:
                _request(directory, frozen=False)
                await asyncio.sleep(V1_THAW_FOR)
            _request(directory, frozen=True)
        delay = min(delay * 2, V1_AGAIN_EVERY if again else 0.05)
    return True


async def freeze(directory: Path, *, sandbox_id: str, timeout: float = SETTLE_TIMEOUT) -> None:
    """Freeze the group and wait until every task has stopped; undone if it does not settle."""
    _request(directory, frozen=True)
    if await _until_settled(directory, True, timeout):
        return
    thaw_now([directory])
    raise ExtensionError(
        f"local sandbox {sandbox_id}: its processes did not all stop within {timeout:.0f}s "
        f"(one may be in uninterruptible sleep, e.g. on a slow disk); it was left running. "
        "Try the pause again",
        sandbox_id=sandbox_id,
        extension="ext.local",
    )


async def thaw(directory: Path, *, sandbox_id: str, timeout: float = SETTLE_TIMEOUT) -> None:
    """Thaw the group and wait until it reports so."""
    _request(directory, frozen=False)
    if not await _until_settled(directory, False, timeout):
        raise ExtensionError(
            f"local sandbox {sandbox_id}: {directory} did not report thawed within "
            f"{timeout:.0f}s; try the resume again",
            sandbox_id=sandbox_id,
            extension="ext.local",
        )


def thaw_now(dirs: Iterable[Path]) -> None:
    """Ask every freezer among ``dirs`` to thaw, without waiting or failing (before a kill:
    a task frozen by the v1 freezer acts on SIGKILL only once thawed)."""
    for directory in dirs:
        with contextlib.suppress(OSError):
            if (directory / V1_STATE).exists() or (directory / V2_FREEZE).exists():
                _request(directory, frozen=False)
