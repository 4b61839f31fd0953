"""Unpacking an uploaded archive on a worker, refusing anything that could reach outside.

The archive came from any bus client, so it is treated as hostile: only
directories, regular files and symlinks are accepted (no hard links,
devices or FIFOs), no name may be absolute or climb with ``..``, and the
entry count and total size are checked against the limits before a byte is
written. The extraction itself runs under tarfile's ``data`` filter, which
also refuses links whose targets leave the destination and drops set-uid
and other special mode bits.
"""

from __future__ import annotations

import posixpath
import tarfile
from pathlib import Path

from sandboxer.errors import WorkspaceRefused
from sandboxer.workspaces.limits import ArchiveLimits

__all__ = ["extract_archive"]

_ACCEPTED = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE})


def _check_member(member: tarfile.TarInfo, links: set[str]) -> None:
    name = member.name
    parts = name.split("/")
    if member.type not in _ACCEPTED:
        raise WorkspaceRefused(
            f"the workspace archive holds {name!r} of a kind a workspace may not hold "
            "(only directories, regular files and symlinks are accepted)"
        )
    if not name or posixpath.isabs(name) or ".." in parts or "\0" in name:
        raise WorkspaceRefused(f"the workspace archive holds an unsafe name {name[:200]!r}")
    # Nothing is written through a symlink of the archive: a packed tree never holds an entry
    # below a link, and a chain of links (``p -> .``, ``q -> p/p/../..``) defeats the lexical
    # check below and, on Pythons before 3.11.13/3.12.11, the data filter's (CVE-2025-4517).
    path = posixpath.normpath(name)
    parent = posixpath.dirname(path)
    while parent:
        if parent in links:
            raise WorkspaceRefused(
                f"the workspace archive writes {name[:200]!r} through its symlink {parent!r}"
            )
        parent = posixpath.dirname(parent)
    if member.issym():
        links.add(path)
        target = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
        if posixpath.isabs(member.linkname) or target == ".." or target.startswith("../"):
            raise WorkspaceRefused(
                f"the workspace archive holds a symlink {name!r} -> {member.linkname[:200]!r} "
                "that leaves the workspace"
            )


def extract_archive(archive: Path, destination: Path, limits: ArchiveLimits) -> int:
    """Unpack ``archive`` (a plain tar) into the empty directory ``destination``.

    Returns the number of entries; raises :class:`WorkspaceRefused` before
    writing anything when the archive breaks a rule or a limit.
    """
    try:
        with tarfile.open(archive, "r:") as tar:
            members = []
            links: set[str] = set()
            total = 0
            for member in tar:
                members.append(member)
                if len(members) > limits.max_entries:
                    raise WorkspaceRefused(
                        f"the workspace archive has more than {limits.max_entries} entries"
                    )
                _check_member(member, links)
                total += member.size
                if total > limits.max_bytes:
                    raise WorkspaceRefused(
                        f"the workspace archive unpacks to more than "
                        f"{limits.max_bytes // (1024 * 1024)} MiB (SANDBOXER_UPLOAD_MAX_MB)"
                    )
            tar.extractall(destination, members=members, filter="data")
    except tarfile.FilterError as exc:
        raise WorkspaceRefused(f"the workspace archive is unsafe: {exc}") from None
    except tarfile.TarError as exc:
        raise WorkspaceRefused(f"the workspace archive is not a readable tar: {exc}") from None
    return len(members)
