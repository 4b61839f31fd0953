"""ext.local's side of a snapshot: copy a sandbox's workspace out to a local directory.

The worker packs and stores what lands in ``destination`` (the snapshot's
data); the sandbox keeps running. Secrets the backend wrote into the
workspace (``.sandboxer/secrets.env``) are left out: a snapshot may be
restored anywhere, and a restore gets the secrets of its own profile.
Special files are left out as a provision's copy leaves them out.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from sandboxer.errors import ExtensionError, SandboxNotFound
from sandboxer.extensions.local.workspace import SECRETS_FILE, _skip_special

__all__ = ["copy_workspace_out"]


def _ignore(workspace: Path) -> Callable[[str, list[str]], set[str]]:
    secrets = workspace / SECRETS_FILE

    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = _skip_special(directory, names)
        if Path(directory) == secrets.parent and secrets.name in names:
            skipped.add(secrets.name)
        return skipped

    return ignore


def copy_workspace_out(workspace: Path, destination: Path, *, sandbox_id: str) -> None:
    """Copy ``workspace``'s tree into ``destination`` (symlinks as links, never followed)."""
    if not workspace.is_dir():
        raise SandboxNotFound(
            f"local sandbox {sandbox_id} has no workspace at {workspace}",
            sandbox_id=sandbox_id,
            extension="ext.local",
        )
    try:
        shutil.copytree(
            workspace,
            destination,
            symlinks=True,
            ignore=_ignore(workspace),
            dirs_exist_ok=True,
        )
    except (shutil.Error, OSError) as exc:
        raise ExtensionError(
            f"copying the workspace of {sandbox_id} out for a snapshot failed: {exc}",
            sandbox_id=sandbox_id,
            extension="ext.local",
        ) from exc
