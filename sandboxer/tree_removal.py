"""Removing a directory tree at any depth, never following a link in it.

The trees the service removes were shaped by someone it does not trust: a sandbox's
workspace (``mkdir d; cd d`` in a loop nests it as deep as the disk allows), the staging of
an uploaded archive or of a sandbox's tar (as deep as PATH_MAX lets them unpack, some two
thousand levels). Python 3.11's ``shutil.rmtree`` recurses once per level and keeps a
descriptor open per level: a thousand levels raised RecursionError (not an OSError, so not
even ``ignore_errors`` held it back), and the teardown of such a sandbox failed every time
it was tried, as did the removal of such a staging directory and the sweep of it at the
next start.

Here the walk is a loop that holds one directory open at a time. It goes down by opening
a listed name relative to the directory it is in (``O_NOFOLLOW``, so a link swapped in is
unlinked, never entered) and back up through ``..``, which must be the directory it came
down from (its device and inode), so a directory moved meanwhile is never walked out of.
It keeps the names still to visit, not a descriptor, per level. Entries that vanish under
it (another worker removing the same tree) are skipped, as before.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["remove_tree"]

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NOT_A_DIRECTORY = {errno.ELOOP, errno.ENOTDIR}
"""What opening a name as a directory meets when it is a link or a file (swapped in)."""


@dataclass
class _Level:
    """A directory the walk went down into: its name above, its identity, what is left."""

    name: str
    identity: tuple[int, int]
    subdirectories: list[str] = field(default_factory=list)


def remove_tree(path: Path, *, ignore_errors: bool = False) -> None:
    """Remove ``path`` and everything below it. A link (or a file) at ``path`` is unlinked,
    never followed; nothing at ``path`` is nothing to do. Raises OSError as the system gives
    it, unless ``ignore_errors`` (then what could not be removed stays)."""
    try:
        while not _removed(path):
            pass  # another remover took the directory the walk was in: from the top again
    except OSError:
        if not ignore_errors:
            raise


def _removed(path: Path) -> bool:
    """One walk removing ``path``'s tree; False when it must start again from the top."""
    try:
        fd = os.open(path, _DIRECTORY)
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno not in _NOT_A_DIRECTORY:
            raise
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return True
    try:
        levels = [_Level("", _identity(fd), _clear(fd))]
        while True:
            level = levels[-1]
            if level.subdirectories:
                name = level.subdirectories.pop()
                child = _enter(fd, name)
                if child is not None:
                    os.close(fd)
                    fd = child
                    levels.append(_Level(name, _identity(fd), _clear(fd)))
                continue
            # Every subdirectory listed is gone; look once more for what came since.
            level.subdirectories = _clear(fd)
            if level.subdirectories:
                continue
            if len(levels) == 1:
                break
            try:
                parent = os.open("..", _DIRECTORY, dir_fd=fd)
            except FileNotFoundError:
                return False
            if _identity(parent) != levels[-2].identity:
                os.close(parent)
                raise OSError(
                    errno.ESTALE,
                    f"a directory below {path} was moved while the tree was removed",
                )
            os.close(fd)
            fd = parent
            levels.pop()
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(level.name, dir_fd=fd)
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(path)
    return True


def _identity(fd: int) -> tuple[int, int]:
    found = os.fstat(fd)
    return found.st_dev, found.st_ino


def _enter(directory: int, name: str) -> int | None:
    """The subdirectory ``name`` opened, or None when it is gone or no longer a directory
    (a link or a file put there since the listing is unlinked, never followed)."""
    try:
        return os.open(name, _DIRECTORY, dir_fd=directory)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno not in _NOT_A_DIRECTORY:
            raise
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=directory)
    return None


def _clear(directory: int) -> list[str]:
    """Unlink every entry of ``directory`` but its subdirectories; their names."""
    subdirectories: list[str] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    subdirectories.append(entry.name)
                    continue
                os.unlink(entry.name, dir_fd=directory)
            except FileNotFoundError:
                continue  # removed by someone else meanwhile
            except IsADirectoryError:
                subdirectories.append(entry.name)  # made a directory since the listing
    return subdirectories
