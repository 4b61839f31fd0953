"""Packing a directory into a deterministic tar archive: the same tree gives the same bytes.

Entries are sorted, owners are 0/0 without names, every mtime is the same
fixed instant and modes keep only their permission bits, so the archive's
hash depends on names, contents, permissions and link targets alone (and a
re-checkout of the same commit is uploaded once). Symlinks are stored as
links; one whose target is absolute, leaves the tree or climbs with ``..``
after a name is refused, because no worker would unpack it (the one rule,
:func:`~sandboxer.workspaces.extract.link_stays_inside`), as is a path nested deeper or
longer than a worker unpacks (:func:`~sandboxer.workspaces.limits.shape_refusal`). Sockets, FIFOs and
devices are left out: a workspace has no use for them. Names in ``exclude``
are left out at any depth.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
import tarfile
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from sandboxer.errors import WorkspaceRefused
from sandboxer.workspaces.extract import link_stays_inside
from sandboxer.workspaces.limits import ArchiveLimits, shape_refusal

__all__ = ["FIXED_MTIME", "Packed", "pack_directory"]

FIXED_MTIME = 946684800
"""2000-01-01T00:00:00Z: a plausible time for tools that distrust 1970, the same for every file."""


@dataclass(frozen=True)
class Packed:
    """An archive written to ``path``: its SHA-256, size in bytes and number of entries."""

    path: Path
    sha256: str
    size: int
    entries: int


def _info(relative: str, found: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(relative)
    info.mode = stat.S_IMODE(found.st_mode)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = FIXED_MTIME
    return info


def _entries(source: Path, exclude: Collection[str]) -> list[tuple[str, Path]]:
    """Every entry below ``source`` in a stable order, parents before children."""
    found: list[tuple[str, Path]] = []
    pending = [""]
    while pending:
        relative = pending.pop(0)
        directory = source / relative if relative else source
        for name in sorted(os.listdir(directory)):
            if name in exclude:
                continue
            child = posixpath.join(relative, name) if relative else name
            shape = shape_refusal(child)
            if shape is not None:  # checked as the walk goes: it never goes deeper
                raise WorkspaceRefused(
                    f"{child[:200]!r} in {source} {shape}, and no worker unpacks it; leave it "
                    "out with --exclude or SANDBOXER_UPLOAD_EXCLUDE"
                )
            path = directory / name
            found.append((child, path))
            if stat.S_ISDIR(path.lstat().st_mode):
                pending.append(child)
    return sorted(found)


def pack_directory(
    source: Path,
    archive: Path,
    *,
    exclude: Collection[str] = (),
    limits: ArchiveLimits | None = None,
    progress: Callable[[int], None] | None = None,
) -> Packed:
    """Write ``source``'s tree to ``archive``; :class:`WorkspaceRefused` past a limit."""
    limits = limits or ArchiveLimits()
    if not source.is_dir():
        raise WorkspaceRefused(f"{source} is not a directory; pass the directory to upload")
    entries = _entries(source, exclude)
    if len(entries) > limits.max_entries:
        raise WorkspaceRefused(
            f"{source} holds {len(entries)} entries, more than the {limits.max_entries} a "
            "workspace may have; leave some out with --exclude or SANDBOXER_UPLOAD_EXCLUDE"
        )
    counted = 0
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for relative, path in entries:
            found = path.lstat()
            info = _info(relative, found)
            if stat.S_ISLNK(found.st_mode):
                target = os.readlink(path)
                if not link_stays_inside(relative, target):
                    raise WorkspaceRefused(
                        f"{path} is a symlink to {target!r}, outside the directory or climbing "
                        "with '..' after a name; no worker unpacks such a link. Remove it, "
                        "point it with '..' only at its start (../x, not sub/../x), or leave "
                        "it out with --exclude"
                    )
                info.type, info.linkname = tarfile.SYMTYPE, target
                tar.addfile(info)
            elif stat.S_ISDIR(found.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISREG(found.st_mode):
                info.size = found.st_size
                counted += found.st_size
                if counted > limits.max_bytes:
                    raise WorkspaceRefused(
                        f"{source} holds more than {limits.max_bytes // (1024 * 1024)} MiB of "
                        "files, the largest workspace accepted (SANDBOXER_UPLOAD_MAX_MB); leave "
                        "build outputs out with --exclude or SANDBOXER_UPLOAD_EXCLUDE"
                    )
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                continue  # sockets, FIFOs, devices
            if progress is not None:
                progress(counted)
    digest = hashlib.sha256()
    with archive.open("rb") as handle:
        while block := handle.read(1024 * 1024):
            digest.update(block)
    return Packed(archive, digest.hexdigest(), archive.stat().st_size, len(entries))
