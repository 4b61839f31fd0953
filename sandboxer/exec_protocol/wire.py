"""What a client of the exec and file services shares with them: their headers, the files
subject and the check a path passes before anything is sent (docs/protocol.md#files).

A module of its own so that a client (:mod:`sandboxer.transfer`, :mod:`sandboxer.client`)
reads these without importing the services, which bring the backends' interface, the
event store and the profile config with them; ``exec_service`` and ``file_service``
use the same names from here.
"""

from __future__ import annotations

from sandboxer.errors import PathRefused
from sandboxer.workspaces.roots import MAX_PATH_CHARS

__all__ = [
    "EXEC_HEADER",
    "FILES_HEADER",
    "FILES_PREFIX",
    "MAX_PATH_CHARS",
    "STDIN_HEADER",
    "check_path",
    "files_subject",
]

EXEC_HEADER = "Sandboxer-Exec"
"""An exec's answers: ``started``, output, ``alive``, ``done``."""
STDIN_HEADER = "Sandboxer-Exec-Stdin"
"""A chunk of an exec's standard input (``data``), or its end (``end``)."""
FILES_PREFIX = "sandboxer.files"
FILES_HEADER = "Sandboxer-Files"
"""A copy's answers: ``started``, ``alive``, ``done``."""


def files_subject(sandbox_id: str) -> str:
    return f"{FILES_PREFIX}.{sandbox_id}"


def check_path(path: str, *, root_allowed: bool) -> str:
    """``path`` as ``./a/b`` (or ``.``), when it stays in the workspace as written.

    Raises :class:`PathRefused` for an absolute path, a ``..`` part, NUL, or an
    empty one (the workspace itself, ``.``, is accepted only where ``root_allowed``).
    """
    shown = path[:200]
    if not path or len(path) > MAX_PATH_CHARS or "\0" in path:
        raise PathRefused(f"path {shown!r} is not a usable path (empty, too long or has NUL)")
    if path.startswith("/"):
        raise PathRefused(
            f"path {shown!r} is absolute; paths are relative to the sandbox's workspace "
            "(write it without the leading /)"
        )
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise PathRefused(f"path {shown!r} climbs with '..'; it must stay in the workspace")
    if not parts:
        if not root_allowed:
            raise PathRefused(f"path {shown!r} names the workspace itself; name a file in it")
        return "."
    return "./" + "/".join(parts)
