"""The operator's allowed input roots: the only host paths a worker copies into a sandbox.

Any bus client can publish a create, so a path input is a request to read
the worker's disk on someone else's behalf. A worker accepts one only when,
after every symlink and ``..`` is resolved, it is a directory inside a root
listed in ``SANDBOXER_INPUT_ROOTS``. Every refusal gives the same reason
whether the path exists or not, so a refusal is no oracle for files outside.
Symlinks *inside* an accepted tree are copied as links, never followed, by
every backend's copy (ext.local's descriptor walk, ``rsync -a``, the SFTP
walk, tar), so a link pointing out of the root carries a path, not the
file's bytes.

What a root holds is not trusted either: an accepted tree is held to the limits of an
upload (:func:`check_root_tree`) before any backend copies it.
"""

from __future__ import annotations

import os
from pathlib import Path

from sandboxer.errors import InputOutsideRoots, SettingError, WorkspaceRefused
from sandboxer.workspaces.limits import ArchiveLimits, shape_refusal

__all__ = [
    "INPUT_ROOTS_VARIABLE",
    "MAX_PATH_CHARS",
    "check_root_tree",
    "parse_input_roots",
    "resolve_under_roots",
]

INPUT_ROOTS_VARIABLE = "SANDBOXER_INPUT_ROOTS"
MAX_PATH_CHARS = 4096
"""Linux's PATH_MAX: anything longer cannot name a file, so it is refused before any lookup."""
_SHOWN_CHARS = 200


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
    # Roots are resolved again here: a root handed over without parsing may be a symlink.
    resolved = [Path(os.path.realpath(root)) for root in roots]
    inside = any(real.is_relative_to(root) for root in resolved)
    # One reason for "outside", "missing" and "not a directory" alike: no probing of the host.
    if not inside or not real.is_dir():
        raise _refused(name, value, roots, "it is not a directory inside an allowed root")
    return real


def check_root_tree(name: str, top: Path, limits: ArchiveLimits) -> None:
    """Refuse the accepted directory ``top`` past the limits an upload of it would meet: its
    entries (directories, files and links), the bytes of its regular files, the shape of
    its paths. Every backend copies a file whole, so a sparse file counts whole: a 1 TiB
    ``truncate`` in a root, which takes no block there, was copied byte by byte into each
    sandbox asking for it, onto the worker's disk (ext.local) or the host's. Links are not
    followed; what the tree becomes between this walk and the copy is a root's writer's
    (docs/workspaces.md#threat-model)."""
    entries = size = 0
    pending = [""]
    while pending:
        relative = pending.pop()
        try:
            listing = list(os.scandir(top / relative if relative else top))
        except OSError as exc:
            raise WorkspaceRefused(
                f"input {name}: {top} cannot be read ({exc.strerror}); make it readable by "
                "the sandboxer worker"
            ) from None
        for item in listing:
            child = f"{relative}/{item.name}" if relative else item.name
            if item.is_dir(follow_symlinks=False):
                pending.append(child)
            elif item.is_file(follow_symlinks=False):
                size += item.stat(follow_symlinks=False).st_size
            elif not item.is_symlink():
                continue  # sockets, FIFOs, devices: no backend copies them
            entries += 1
            shape = shape_refusal(child)
            if shape is not None:
                raise WorkspaceRefused(f"input {name}: {child[:200]!r} in {top} {shape}")
            if entries > limits.max_entries:
                raise WorkspaceRefused(
                    f"input {name}: {top} holds more than {limits.max_entries} entries, the "
                    "most a directory input may have; point it at a smaller directory"
                )
            if size > limits.max_bytes:
                raise WorkspaceRefused(
                    f"input {name}: {top} holds more than "
                    f"{limits.max_bytes // (1024 * 1024)} MiB of files (a sparse file counts "
                    "whole: every backend copies it whole), the most a directory input may "
                    "(SANDBOXER_UPLOAD_MAX_MB); point it at a smaller directory"
                )
