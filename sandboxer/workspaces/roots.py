"""The operator's allowed input roots: the only host paths a worker copies into a sandbox.

Any bus client can publish a create, so a path input is a request to read
the worker's disk on someone else's behalf. A worker accepts one only when,
after every symlink and ``..`` is resolved, it is a directory inside a root
listed in ``SANDBOXER_INPUT_ROOTS``. Every refusal gives the same reason
whether the path exists or not, so a refusal is no oracle for files outside.

What a root holds is not trusted either, and its writer may change it while the worker
reads it: an accepted tree is held to the limits of an upload (:func:`check_root_tree`),
then copied once into a staging directory of the worker's own (:func:`stage_root_tree`),
and every backend copies that copy. Both open the tree from the root's descriptor, one
name at a time with ``O_NOFOLLOW``, and every entry below by its directory's descriptor
(:func:`~sandboxer.workspaces.tree_copy.copy_tree`), links copied as links; the copy
is bounded by the limits as it runs. Backends read by path (tar, ``rsync``, the SFTP walk,
ext.local's top directory): given the root's own tree, a directory of it or above the
input swapped for a link to ``/`` after the check took them into the worker's files.
Hard links are copied as files: one to a file its writer cannot read is the kernel's to
refuse (``fs.protected_hardlinks = 1``, every distribution's default). A worker whose kernel
does not refuse them copies no tree of a root (:func:`hard_link_refusal`): any writer of a
root on the same filesystem could link a file of the worker's (``/etc/shadow``) into it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from sandboxer.errors import InputOutsideRoots, SettingError, WorkspaceRefused
from sandboxer.workspaces.limits import ArchiveLimits, shape_refusal
from sandboxer.workspaces.tree_copy import Wording, copy_tree

__all__ = [
    "INPUT_ROOTS_VARIABLE",
    "MAX_PATH_CHARS",
    "check_root_tree",
    "hard_link_refusal",
    "parse_input_roots",
    "resolve_under_roots",
    "stage_root_tree",
]

INPUT_ROOTS_VARIABLE = "SANDBOXER_INPUT_ROOTS"
MAX_PATH_CHARS = 4096
"""Linux's PATH_MAX: anything longer cannot name a file, so it is refused before any lookup."""
_SHOWN_CHARS = 200
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SWAPPED = {errno.ELOOP, errno.ENOTDIR, errno.ENOENT}
PROTECTED_HARDLINKS = Path("/proc/sys/fs/protected_hardlinks")
"""What opening a name meets when it was swapped for a link (ELOOP) or a file, or removed."""


def parse_input_roots(raw: str) -> tuple[Path, ...]:
    """The roots in ``raw`` (absolute directories separated by ``:``), symlinks resolved.

    A root is stored resolved, so a root reached through a symlink (``/srv/repos``
    -> ``/data/repos``) contains what lies under its real location.
    """
    roots: list[Path] = []
    for part in (item.strip() for item in raw.split(os.pathsep)):
        if not part:
            continue
        if "\0" in part or not os.path.isabs(part):
            raise SettingError(
                INPUT_ROOTS_VARIABLE,
                raw,
                f"{part!r} is not an absolute path; list absolute "
                "directories separated by ':', e.g. /srv/repos:/home/ci/checkouts",
            )
        real = Path(os.path.realpath(part))
        if not real.is_dir():
            raise SettingError(INPUT_ROOTS_VARIABLE, raw, f"{part!r} is not an existing directory")
        if real == Path("/"):
            raise SettingError(
                INPUT_ROOTS_VARIABLE,
                raw,
                f"{part!r} is the whole filesystem; list the "
                "directories clients may copy from, never /",
            )
        roots.append(real)
    return tuple(roots)


def _refused(name: str, value: str, roots: tuple[Path, ...], why: str) -> InputOutsideRoots:
    shown = value if len(value) <= _SHOWN_CHARS else value[:_SHOWN_CHARS] + "..."
    allowed = ":".join(str(root) for root in roots) if roots else "not set: no host path is allowed"
    return InputOutsideRoots(
        f"input {name}={shown!r} refused: {why}. This worker copies a path of its own machine "
        f"only from under {INPUT_ROOTS_VARIABLE} ({allowed}); pass the directory from your "
        f"client instead (the CLI and the Python client upload it), or ask the operator to "
        f"add its root to {INPUT_ROOTS_VARIABLE}"
    )


def _containing_root(real: Path, roots: tuple[Path, ...]) -> Path | None:
    # Roots are resolved again here: a root handed over without parsing may be a symlink.
    return next(
        (
            resolved
            for root in roots
            if real.is_relative_to(resolved := Path(os.path.realpath(root)))
        ),
        None,
    )


def resolve_under_roots(name: str, value: str, roots: tuple[Path, ...]) -> Path:
    """The real directory ``value`` names, when it lies inside one of ``roots``.

    Raises :class:`InputOutsideRoots` otherwise, naming the setting. Relative
    paths are refused (the worker's working directory is not the client's),
    and so is ``~`` (the worker's home is not the client's either).
    """
    if not roots:
        raise _refused(name, value, roots, "it names a path on the worker's machine")
    if "\0" in value or len(value) > MAX_PATH_CHARS:
        raise _refused(name, value, roots, "it is not a usable path")
    if not value.startswith("/"):
        raise _refused(name, value, roots, "it is not an absolute path")
    real = Path(os.path.realpath(value))
    # One reason for "outside", "missing" and "not a directory" alike: no probing of the host.
    if _containing_root(real, roots) is None or not real.is_dir():
        raise _refused(name, value, roots, "it is not a directory inside an allowed root")
    return real


def check_root_tree(name: str, top: Path, roots: tuple[Path, ...], limits: ArchiveLimits) -> None:
    """Refuse the accepted directory ``top`` past the limits an upload of it would meet: its
    entries (directories, files and links), the bytes of its regular files, the shape of
    its paths. Every backend copies a file whole, so a sparse file counts whole: a 1 TiB
    ``truncate`` in a root, which takes no block there, was copied byte by byte into each
    sandbox asking for it, onto the worker's disk (ext.local) or the host's. Names and
    sizes only, read as the copy reads them (from the root's descriptor, no link
    followed): a tree past the limits is refused before a byte is copied. The copy
    (:func:`stage_root_tree`) holds the tree to the limits again, however it changed."""
    refusal = hard_link_refusal(name)
    if refusal is not None:
        raise WorkspaceRefused(refusal)
    tally = _Tally(name, top, limits)
    try:
        opened = _open_beneath(top, roots)
        if opened is None:
            raise _refused(name, str(top), roots, "it is not a directory inside an allowed root")
        try:
            _count(opened, "", tally)
        finally:
            os.close(opened)
    except OSError as exc:
        raise WorkspaceRefused(
            f"input {name}: {top} cannot be read ({exc.strerror}); make it readable by "
            "the sandboxer worker"
        ) from None


def hard_link_refusal(name: str, setting: Path = PROTECTED_HARDLINKS) -> str | None:
    """Why input ``name`` cannot be copied from a root on this machine, or None: the kernel
    must refuse a hard link to a file its maker may not read (``fs.protected_hardlinks``
    = 1), or a root's writer could link any file of the worker's filesystem into the tree,
    and the worker (root) would copy it into the sandbox as a plain file. A kernel that
    does not say (no such file) is taken at its default, which is 1 everywhere."""
    try:
        value = setting.read_text().strip()
    except OSError:
        return None
    if value == "0":
        return (
            f"input {name} refused: this worker's kernel lets anyone hard-link a file they "
            "cannot read (fs.protected_hardlinks = 0), so a root's writer could put the "
            "worker's files into the tree; run 'sysctl -w fs.protected_hardlinks=1' on the "
            "worker (and set it in /etc/sysctl.d/), or pass the directory from your client"
        )
    return None


class _Tally:
    """The entries and bytes :func:`check_root_tree` has seen, refused past the limits."""

    def __init__(self, name: str, top: Path, limits: ArchiveLimits) -> None:
        self.name, self.top, self.limits = name, top, limits
        self.entries = self.size = 0

    def add(self, child: str, size: int) -> None:
        name, top, limits = self.name, self.top, self.limits
        self.entries += 1
        self.size += size
        shape = shape_refusal(child)
        if shape is not None:
            raise WorkspaceRefused(f"input {name}: {child[:200]!r} in {top} {shape}")
        if self.entries > limits.max_entries:
            raise WorkspaceRefused(
                f"input {name}: {top} holds more than {limits.max_entries} entries, the "
                "most a directory input may have; point it at a smaller directory"
            )
        if self.size > limits.max_bytes:
            raise WorkspaceRefused(
                f"input {name}: {top} holds more than "
                f"{limits.max_bytes // (1024 * 1024)} MiB of files (a sparse file counts "
                "whole: every backend copies it whole), the most a directory input may "
                "(SANDBOXER_UPLOAD_MAX_MB); point it at a smaller directory"
            )


def _count(directory: int, relative: str, tally: _Tally) -> None:
    """Tally the entries below the open ``directory``, one level per call: the shape limit
    refuses a directory deeper than a workspace's paths go before it is entered."""
    with os.scandir(directory) as listing:
        items = list(listing)
    for item in items:
        child = f"{relative}/{item.name}" if relative else item.name
        if item.is_dir(follow_symlinks=False):
            tally.add(child, 0)
            try:
                below = os.open(item.name, _DIRECTORY, dir_fd=directory)
            except OSError as exc:
                if exc.errno in _SWAPPED:
                    continue  # swapped since the listing: the copy will not follow it either
                raise
            try:
                _count(below, child, tally)
            finally:
                os.close(below)
        elif item.is_file(follow_symlinks=False):
            tally.add(child, item.stat(follow_symlinks=False).st_size)
        elif item.is_symlink():
            tally.add(child, 0)
        # sockets, FIFOs, devices: no backend copies them


def stage_root_tree(
    name: str,
    real: Path,
    roots: tuple[Path, ...],
    destination: Path,
    limits: ArchiveLimits,
    *,
    staging_root: Path,
) -> None:
    """Copy the accepted directory ``real`` (:func:`resolve_under_roots`) into
    ``destination``, a directory of the worker's own, for the backends to copy from.

    ``real`` was resolved by path, and a root's writer may swap any directory of it for a
    link after that: here it is opened again from its root's descriptor, one name at a
    time, never following a link (a swapped one refuses the input with the reason
    :func:`resolve_under_roots` gives), and copied by descriptors below, links as links
    (:func:`~sandboxer.workspaces.tree_copy.copy_tree`), stopping at ``limits``
    however the tree grew since :func:`check_root_tree`. A tree holding ``staging_root``
    (the worker's home under a root) is refused: it would be copied into itself."""
    if Path(os.path.realpath(staging_root)).is_relative_to(real):
        raise _refused(name, str(real), roots, "it is not a directory inside an allowed root")
    try:
        opened = _open_beneath(real, roots)
        if opened is None:
            raise _refused(name, str(real), roots, "it is not a directory inside an allowed root")
        try:
            wording = Wording(subject=f"input {name}: {real}", then="; then create again")
            copy_tree(opened, destination, limits=limits, wording=wording)
        finally:
            os.close(opened)
    except OSError as exc:
        raise WorkspaceRefused(
            f"input {name}: {real} cannot be read ({exc.strerror}); make it readable by "
            "the sandboxer worker"
        ) from None


def _open_beneath(real: Path, roots: tuple[Path, ...]) -> int | None:
    """A descriptor of the directory ``real``, opened from the root it lies in one name at
    a time, no name followed if it is a link; None when one is no longer a directory
    (swapped for a link or a file, or gone) or ``real`` lies in no root. Python has no
    ``openat2(RESOLVE_NO_SYMLINKS)``: one ``openat`` per name does the same."""
    root = _containing_root(real, roots)
    if root is None:
        return None
    # The root itself is the operator's (resolved when the setting was read): by path.
    opened = os.open(root, _DIRECTORY)
    for name in real.relative_to(root).parts:
        try:
            below = os.open(name, _DIRECTORY, dir_fd=opened)
        except OSError as exc:
            os.close(opened)
            if exc.errno in _SWAPPED:
                return None
            raise
        os.close(opened)
        opened = below
    return opened
