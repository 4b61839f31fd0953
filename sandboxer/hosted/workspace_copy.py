"""A hosted sandbox's workspace, copied out as a tar through the provider's exec, unpacked
under the project's hostile-archive rules (:mod:`sandboxer.workspaces.extract`), so that a
snapshot of it restores on any backend."""

from __future__ import annotations

from pathlib import Path

from sandboxer.domain.left_out import LeftOut
from sandboxer.errors import WorkspaceRefused
from sandboxer.workspaces.extract import extract_host_tree
from sandboxer.workspaces.limits import ArchiveLimits

__all__ = ["too_large", "unpack_tar_bytes"]


def too_large(limits: ArchiveLimits) -> WorkspaceRefused:
    return WorkspaceRefused(
        f"the sandbox's workspace is larger than {limits.max_bytes // (1024 * 1024)} MiB "
        "(SANDBOXER_UPLOAD_MAX_MB)"
    )


def unpack_tar_bytes(data: bytes, destination: Path, limits: ArchiveLimits) -> LeftOut:
    """Unpack the tar ``data`` into the empty directory ``destination``; what it left out."""
    if len(data) > limits.max_bytes:
        raise too_large(limits)
    archive = destination.parent / f"{destination.name}.tar"
    try:
        archive.write_bytes(data)
        return extract_host_tree(archive, destination, limits).left_out
    finally:
        archive.unlink(missing_ok=True)
