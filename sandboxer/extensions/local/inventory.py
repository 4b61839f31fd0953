"""What this machine holds for ext.local: its sandbox directories, and its telemetry."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sandboxer.domain.found import FoundSandbox, Frozen
from sandboxer.extensions import host_report
from sandboxer.extensions.local import attempt_record, cgroups, freezer, workspace
from sandboxer.extensions.local.workspace import Layout
from sandboxer.ids import is_valid_sandbox_id

__all__ = ["machine_report", "owners", "scan_sandboxes"]


def scan_sandboxes(root: Path) -> list[FoundSandbox]:
    """Every sandbox directory under ``root``, alive or not, and why not (for inspect stale)."""
    if not root.is_dir():
        return []
    found = []
    for entry in sorted(root.iterdir()):
        if entry.is_symlink() or not entry.is_dir() or not is_valid_sandbox_id(entry.name):
            continue
        state = workspace.read_state(Layout(root, entry.name))
        if state is None:
            found.append(
                FoundSandbox(
                    sandbox_id=entry.name,
                    alive=False,
                    detail={"state": "missing", "dead": "its state file is missing"},
                )
            )
            continue
        detail: dict[str, Any] = {
            "holder_pid": state.holder_pid,
            # Not state.workspace: a claimed pool member's records its member's path.
            "workspace": str(Layout(root, entry.name).workspace),
            "created_at": state.created_at,
            "cgroups": state.cgroups,
        }
        alive = state.holder_alive()
        if not alive:  # why, for inspect stale: nothing can run in it any more
            detail["dead"] = f"its holder process {state.holder_pid} died"
        # Who made it, as the hosted backends list their attempt labels (a claimed member's
        # record is not listed: see attempt_record.listed).
        made_by = attempt_record.listed(state.made_by, state.pool_member, entry.name)
        found.append(
            FoundSandbox(
                sandbox_id=entry.name,
                alive=alive,
                detail=detail,
                made_by=made_by,
                frozen=_frozen(state.cgroups) if alive else None,
            )
        )
    return found


def _frozen(cgroup_dirs: Sequence[str]) -> Frozen | None:
    """How much of the sandbox its freezer has frozen; None without a freezer group, or
    when it cannot be read (removed meanwhile: a teardown under way)."""
    try:
        control = freezer.find_control(Path(path) for path in cgroup_dirs)
        return None if control is None else freezer.how_frozen(control)
    except OSError:
        return None


def owners(roots: Sequence[Path]) -> set[str]:
    """The ids whose host-wide resources the sandbox directories under ``roots`` account for:
    each directory's own, and the pool member a claimed sandbox's ``state.json`` names (its
    cgroups, network and uid keep the member's name).

    A claim moves a member's directory from the pool's root to the sandbox's: give the pool's
    first, so that a directory moved while they are read is seen in one or the other."""
    found: set[str] = set()
    for root in roots:
        try:
            entries = sorted(root.iterdir())
        except OSError:  # no such root (yet)
            continue
        for entry in entries:
            if not is_valid_sandbox_id(entry.name):
                continue
            found.add(entry.name)
            state = workspace.read_state(Layout(root, entry.name))
            if state is not None and is_valid_sandbox_id(state.pool_member):
                found.add(str(state.pool_member))
    return found


def machine_report(root: Path, cgroup_base: Path) -> dict[str, Any]:
    """Load, memory and disk of this machine, and what ext.local can use on it (blocking)."""
    existing = root if root.exists() else root.parent
    usage = shutil.disk_usage(existing)
    version = cgroups.detect(cgroup_base)
    if version == "v2":
        writable = {"unified": os.access(cgroup_base, os.W_OK)}
    else:
        writable = {
            ctl: os.access(cgroup_base / ctl / "cgroup.procs", os.W_OK)
            for ctl in cgroups.V1_CONTROLLERS
        }
    return {
        "root": str(root),
        "cgroup_version": version,
        "cgroups_writable": writable,
        "bwrap": shutil.which("bwrap"),
        "nsenter": shutil.which("nsenter"),
        **host_report.parse_loadavg(Path("/proc/loadavg").read_text()),
        **host_report.parse_meminfo(Path("/proc/meminfo").read_text()),
        "disk_total_mb": usage.total // (1024 * 1024),
        "disk_free_mb": usage.free // (1024 * 1024),
    }
