"""Copying a tree that a sandbox may change while it is read, never following its links.

A sandbox's processes can rename a symlink over a file or a directory of their workspace
between the moment a copier lists the name and the moment it opens it. ``shutil.copytree``
decides from the listing, then opens the path, and the open follows the link: a file of the
host would be copied as the sandbox's own (into a snapshot its owner can restore and read).
Here every directory is opened relative to its parent's descriptor with ``O_NOFOLLOW``, every
file relative to its directory's with ``O_NOFOLLOW``, and what was opened is checked again
with ``fstat``. A link is copied as a link; whatever was swapped in meanwhile is left out.
Special files (FIFOs, sockets, devices) are left out: reading a FIFO would block forever. What
was left out is returned (:class:`~sandboxer.domain.left_out.LeftOut`), for a snapshot to tell.

A snapshot's copy is bounded as it runs (``limits``): the sandbox chose what its workspace
holds, and a sparse file (``truncate -s 1T``, no block of the sandbox's disk) or a file with
a thousand hard links is written out whole, byte by byte and name by name, to the worker's
disk, which also holds the event log. Checked only when the copy is packed, it had filled
that disk first. So is the depth of the tree (a path's shape,
:func:`~sandboxer.workspaces.limits.shape_refusal`): this walk recurses per level, and a
workspace nested a few hundred deep raised RecursionError rather than say why.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from sandboxer.domain.left_out import Kind, LeftOut
from sandboxer.errors import WorkspaceRefused
from sandboxer.workspaces.limits import ArchiveLimits, shape_refusal

__all__ = ["Wording", "copy_tree"]

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CHUNK = 1024 * 1024
_CHANGED = {errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EINVAL}
"""What an open or a readlink meets when the name was removed or swapped since the listing."""


def _changed(exc: OSError) -> bool:
    return exc.errno in _CHANGED


@dataclass(frozen=True)
class Wording:
    """How a refusal of the copy names what was copied and what to do: a snapshot's copy
    of a workspace by default, an input root's tree (:mod:`sandboxer.workspaces.roots`)
    with its input's name."""

    subject: str = "the workspace"
    then: str = " and take the snapshot again"


class _Budget:
    """What the copy may still write: bytes of files and entries, as a workspace archive
    counts them (:func:`~sandboxer.workspaces.pack.pack_directory`); unbounded without
    limits."""

    def __init__(self, limits: ArchiveLimits | None, wording: Wording) -> None:
        self._limits = limits
        self._wording = wording
        self._bytes = 0
        self._entries = 0

    def entry(self, path: str) -> None:
        """Count the entry ``path`` (relative to the top), refused past the limits: the
        entries, or the depth and length a workspace archive's paths may have (deeper, this
        walk itself, recursing per level, raised RecursionError)."""
        subject, then = self._wording.subject, self._wording.then
        shape = shape_refusal(path) if self._limits is not None else None
        if shape is not None:
            raise WorkspaceRefused(
                f"{subject}'s {path[:200]!r} {shape}, as a workspace archive's may not; "
                f"move it higher or remove it{then}"
            )
        self._entries += 1
        if self._limits is not None and self._entries > self._limits.max_entries:
            raise WorkspaceRefused(
                f"{subject} holds more than {self._limits.max_entries} entries (files, "
                "directories and links), the most a workspace archive may have; remove some "
                f"(build outputs, caches){then}"
            )

    def take(self, size: int) -> None:
        self._bytes += size
        if self._limits is not None and self._bytes > self._limits.max_bytes:
            raise WorkspaceRefused(
                f"{self._wording.subject} holds more than "
                f"{self._limits.max_bytes // (1024 * 1024)} MiB of files (a sparse file and "
                "each name of a hard link count whole), the largest workspace archive "
                f"(SANDBOXER_UPLOAD_MAX_MB); remove build outputs or caches{self._wording.then}"
            )


def copy_tree(
    source: Path | int,
    destination: Path,
    *,
    leave_out: Collection[str] = (),
    limits: ArchiveLimits | None = None,
    wording: Wording = Wording(),
) -> LeftOut:
    """Copy the directories, regular files and symlinks (as links) below ``source`` into
    ``destination``, made if missing; ``leave_out`` names paths relative to ``source``.
    ``source`` is a path or the descriptor of a directory the caller opened (and closes):
    by path, the links of its parents are followed. Returns the special files left out
    (``leave_out``'s are not reported). Raises OSError when ``source`` is not a directory
    (or is a link) or a copy fails, and :class:`WorkspaceRefused` as soon as the copy passes
    ``limits`` (what it wrote stays in ``destination``, for the caller to remove)."""
    special = LeftOut()
    top = os.open(source, _DIRECTORY) if isinstance(source, Path) else os.dup(source)
    try:
        destination.mkdir(parents=True, exist_ok=True)
        budget = _Budget(limits, wording)
        _copy_directory(top, destination, "", frozenset(leave_out), special, budget)
    finally:
        os.close(top)
    return special


def _kind(mode: int) -> Kind:
    """The kind of a special file (neither a directory, a regular file nor a link)."""
    if stat.S_ISFIFO(mode):
        return "fifo"
    return "socket" if stat.S_ISSOCK(mode) else "device"


def _copy_directory(
    directory: int,
    target: Path,
    relative: str,
    leave_out: frozenset[str],
    special: LeftOut,
    budget: _Budget,
) -> None:
    for name in sorted(os.listdir(directory)):
        path = f"{relative}/{name}" if relative else name
        if path in leave_out:
            continue
        try:
            mode = os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode
        except FileNotFoundError:
            continue  # removed since the listing
        if stat.S_ISLNK(mode):
            budget.entry(path)
            _copy_link(directory, name, target / name)
        elif stat.S_ISDIR(mode):
            budget.entry(path)
            _copy_subdirectory(directory, name, target / name, path, leave_out, special, budget)
        elif stat.S_ISREG(mode):
            budget.entry(path)
            if (swapped := _copy_file(directory, name, target / name, budget)) is not None:
                special.add(_kind(swapped), path)
        else:
            special.add(_kind(mode), path)


def _copy_link(directory: int, name: str, target: Path) -> None:
    try:
        link = os.readlink(name, dir_fd=directory)
    except OSError as exc:
        if _changed(exc):
            return  # removed, or no longer a link (EINVAL)
        raise
    target.unlink(missing_ok=True)
    os.symlink(link, target)


def _copy_subdirectory(
    directory: int,
    name: str,
    target: Path,
    relative: str,
    leave_out: frozenset[str],
    special: LeftOut,
    budget: _Budget,
) -> None:
    try:
        opened = os.open(name, _DIRECTORY, dir_fd=directory)
    except OSError as exc:
        if _changed(exc):
            return  # removed, or swapped for a link (ELOOP) or a file (ENOTDIR)
        raise
    try:
        found = os.fstat(opened)
        target.mkdir(mode=0o700, exist_ok=True)
        _copy_directory(opened, target, relative, leave_out, special, budget)
        os.chmod(target, stat.S_IMODE(found.st_mode))
        os.utime(target, ns=(found.st_atime_ns, found.st_mtime_ns))
    finally:
        os.close(opened)


def _copy_file(directory: int, name: str, target: Path, budget: _Budget) -> int | None:
    """Copy the regular file ``name``; the mode of the special file found instead, if one was
    swapped in since the listing (left out)."""
    try:
        opened = os.open(name, _FILE, dir_fd=directory)
    except OSError as exc:
        if _changed(exc):
            return None  # removed, or swapped for a link (ELOOP)
        raise
    with os.fdopen(opened, "rb") as source:
        found = os.fstat(opened)
        if not stat.S_ISREG(found.st_mode):
            # Swapped since the listing: for a FIFO or a device (left out, and told), or for
            # a directory (made after the listing, as if it came after the copy).
            return None if stat.S_ISDIR(found.st_mode) else found.st_mode
        target.unlink(missing_ok=True)
        with target.open("xb") as copy:
            # Counted before it is written: the limit bounds what lands on the disk, and a
            # file that grows while it is read counts what was read.
            while chunk := source.read(_CHUNK):
                budget.take(len(chunk))
                copy.write(chunk)
    os.chmod(target, stat.S_IMODE(found.st_mode))
    os.utime(target, ns=(found.st_atime_ns, found.st_mtime_ns))
    return None
