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
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Collection
from pathlib import Path

from sandboxer.domain.left_out import Kind, LeftOut

__all__ = ["copy_tree"]

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CHUNK = 1024 * 1024
_CHANGED = {errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EINVAL}
"""What an open or a readlink meets when the name was removed or swapped since the listing."""


def _changed(exc: OSError) -> bool:
    return exc.errno in _CHANGED


def copy_tree(source: Path, destination: Path, *, leave_out: Collection[str] = ()) -> LeftOut:
    """Copy the directories, regular files and symlinks (as links) below ``source`` into
    ``destination``, made if missing; ``leave_out`` names paths relative to ``source``.
    Returns the special files left out (``leave_out``'s are not reported). Raises OSError
    when ``source`` is not a directory (or is a link) or a copy fails."""
    special = LeftOut()
    top = os.open(source, _DIRECTORY)
    try:
        destination.mkdir(parents=True, exist_ok=True)
        _copy_directory(top, destination, "", frozenset(leave_out), special)
    finally:
        os.close(top)
    return special


def _kind(mode: int) -> Kind:
    """The kind of a special file (neither a directory, a regular file nor a link)."""
    if stat.S_ISFIFO(mode):
        return "fifo"
    return "socket" if stat.S_ISSOCK(mode) else "device"


def _copy_directory(
    directory: int, target: Path, relative: str, leave_out: frozenset[str], special: LeftOut
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
            _copy_link(directory, name, target / name)
        elif stat.S_ISDIR(mode):
            _copy_subdirectory(directory, name, target / name, path, leave_out, special)
        elif stat.S_ISREG(mode):
            if (swapped := _copy_file(directory, name, target / name)) is not None:
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
        _copy_directory(opened, target, relative, leave_out, special)
        os.chmod(target, stat.S_IMODE(found.st_mode))
        os.utime(target, ns=(found.st_atime_ns, found.st_mtime_ns))
    finally:
        os.close(opened)


def _copy_file(directory: int, name: str, target: Path) -> int | None:
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
            shutil.copyfileobj(source, copy, _CHUNK)
    os.chmod(target, stat.S_IMODE(found.st_mode))
    os.utime(target, ns=(found.st_atime_ns, found.st_mtime_ns))
    return None
