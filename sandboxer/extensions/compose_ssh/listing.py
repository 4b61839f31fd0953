"""What one host holds of compose sandboxes, and which of them are alive. Pure.

A compose sandbox is alive while its directory exists and at least one of
its project's containers runs, or is paused (frozen by ``pause``, not dead). Everything else that is left is a corpse,
with the reason in ``detail["dead"]`` for ``inspect stale``: containers all
removed by hand, all exited, or the directory gone. A stack with some
containers stopped and others running is degraded, not dead: reaping it
would destroy work a person may still be using.
"""

from __future__ import annotations

from collections.abc import Sequence

from sandboxer.domain.attempt_order import recorded
from sandboxer.domain.found import FoundSandbox, Frozen
from sandboxer.extensions.compose_ssh import containers
from sandboxer.extensions.ssh_targets import Target
from sandboxer.extensions.ssh_workspace import Scan

__all__ = ["found_on_host", "why_dead"]


def why_dead(
    project: str, has_directory: bool, items: Sequence[containers.Container]
) -> str | None:
    """Why a project is not alive, or ``None`` while it is."""
    if not has_directory:
        return f"its directory is gone ({len(items)} containers of {project} are left)"
    if not items:
        return f"its compose project {project} has no containers (they were removed)"
    if not any(c.running or c.status == "paused" for c in items):
        states = ", ".join(f"{c.service or c.name}: {c.status}" for c in items)
        return f"no container of its compose project {project} is running ({states})"
    return None


def found_on_host(
    item: Target,
    scan: Scan,
    owned: Sequence[containers.Container],
    extension: str,
    *,
    engine_error: str | None = None,
) -> list[FoundSandbox]:
    """Every compose sandbox on the host: those a marker names and those with containers.
    ``engine_error``: the engine could not list containers, so whether a stack runs is
    unknown; a sandbox with its directory is then taken as alive (``engine_error`` in its
    detail), never as dead."""
    by_sandbox: dict[str, list[containers.Container]] = {}
    for container in owned:
        sandbox_id = containers.sandbox_of_project(container.project)
        if sandbox_id is not None:
            by_sandbox.setdefault(sandbox_id, []).append(container)
    # Containers alone do not make a sandbox ours: on a host shared with vm-packer (one
    # workspace root), a command run in its workspace sbx-<id> may start a compose project,
    # whose default name is sbx-<id>. The marker says whose the sandbox is (as it does for
    # teardown, Probe.foreign): ours or no one's (containers whose marker is gone) is
    # listed, another backend's is not.
    foreign = {
        sid
        for sid, marker in scan.markers.items()
        if marker.get("extension") not in (None, extension)
    }
    found = []
    for sandbox_id in sorted((set(scan.owned_by(extension)) | set(by_sandbox)) - foreign):
        items = by_sandbox.get(sandbox_id, [])
        marker = scan.markers.get(sandbox_id, {})
        has_directory = sandbox_id in scan.directories
        project = containers.project_name(sandbox_id)
        if engine_error is not None:
            dead = None if has_directory else why_dead(project, has_directory, items)
        else:
            dead = why_dead(project, has_directory, items)
        detail: dict[str, object] = {
            "directory": item.workspace(sandbox_id) if has_directory else None,
            "compose_project": project,
            "compose_file": marker.get("compose_file"),
            "created_at": marker.get("created_at"),
            "containers": len(items),
            "running": sum(1 for c in items if c.running),
            "services": sorted({c.service for c in items if c.service}),
        }
        if dead is not None:
            detail["dead"] = dead
        if engine_error is not None:
            detail["engine_error"] = engine_error[:500]
        found.append(
            FoundSandbox(
                sandbox_id=sandbox_id,
                alive=dead is None,
                host=item.name,
                detail=detail,
                made_by=recorded(marker.get("made_by")),  # None without a marker, or an old one
                frozen=None if dead is not None or engine_error is not None else _frozen(items),
            )
        )
    return found


def _frozen(items: Sequence[containers.Container]) -> Frozen:
    """How much of a live stack ``compose pause`` has frozen: of its containers that run or
    are paused (a stopped one is neither), all, none or some paused."""
    paused = [c.status == "paused" for c in items if c.running or c.status == "paused"]
    return "all" if all(paused) else "part" if any(paused) else "none"
