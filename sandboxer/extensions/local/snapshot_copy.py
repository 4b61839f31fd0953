"""ext.local's side of a snapshot: copy a sandbox's workspace out to a local directory.

The worker packs and stores what lands in ``destination`` (the snapshot's
data); the sandbox keeps running. Secrets the backend wrote into the
workspace (``.sandboxer/secrets.env``) are left out: a snapshot may be
restored anywhere, and a restore gets the secrets of its own profile.
Special files are left out as a provision's copy leaves them out, and reported. The copy
stops at the limits of a workspace archive, before it passes them on the worker's disk.
"""

from __future__ import annotations

from pathlib import Path

from sandboxer.domain.left_out import LeftOut
from sandboxer.errors import ExtensionError, SandboxNotFound
from sandboxer.extensions.local.workspace import SECRETS_FILE
from sandboxer.workspaces.limits import ArchiveLimits
from sandboxer.workspaces.tree_copy import copy_tree

__all__ = ["copy_workspace_out"]


def copy_workspace_out(
    workspace: Path, destination: Path, *, sandbox_id: str, limits: ArchiveLimits
) -> LeftOut:
    """Copy ``workspace``'s tree into ``destination`` (symlinks as links, never followed,
    even when the sandbox swaps one in while the copy runs: :mod:`tree_copy`); returns the
    FIFOs, sockets and devices it left out. WorkspaceRefused as soon as the copy passes
    ``limits`` (the snapshot could not be stored anyway)."""
    if not workspace.is_dir():
        raise SandboxNotFound(
            f"local sandbox {sandbox_id} has no workspace at {workspace}",
            sandbox_id=sandbox_id,
            extension="ext.local",
        )
    try:
        return copy_tree(workspace, destination, leave_out={SECRETS_FILE.as_posix()}, limits=limits)
    except OSError as exc:
        raise ExtensionError(
            f"copying the workspace of {sandbox_id} out for a snapshot failed: {exc}",
            sandbox_id=sandbox_id,
            extension="ext.local",
        ) from exc
