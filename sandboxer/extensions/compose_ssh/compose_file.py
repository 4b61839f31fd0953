"""Which compose file a sandbox runs, decided on the worker's machine before any connection.

The ``compose_file`` input is a path inside the ``repo`` input: relative,
without ``.`` or ``..`` components, of letters, digits, ``.``, ``_``, ``-``
and ``/``. Without it, the first of :data:`CANDIDATES` that exists in the
repository is used. The repository is local (it is synced to the host
afterwards), so the choice is made here, and a file that is missing, or a
symlink that leads out of the repository, is refused with a message naming
what was looked for.
"""

from __future__ import annotations

import re
from pathlib import Path

from sandboxer.errors import ComposeFileError

__all__ = ["CANDIDATES", "ComposeFileError", "check_compose_file", "resolve_compose_file"]

CANDIDATES = ("e2e/compose.yml", "e2e/docker-compose.yml", "compose.yaml", "docker-compose.yml")
"""Looked for in this order when no ``compose_file`` input is given."""

MAX_LENGTH = 255
_SAFE = re.compile(r"^[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*$")


def check_compose_file(value: str) -> str:
    """``value`` if it is a safe relative path; :class:`ComposeFileError` otherwise."""
    parts = value.split("/")
    if (
        not value
        or len(value) > MAX_LENGTH
        or not _SAFE.fullmatch(value)
        or any(part in {".", ".."} for part in parts)
    ):
        raise ComposeFileError(
            f"compose_file {value!r} must be a relative path inside the repo: letters, digits, "
            "'.', '_', '-' and '/', no '.' or '..' components, at most "
            f"{MAX_LENGTH} characters (e.g. e2e/compose.yml)"
        )
    return value


def _inside(repo: Path, relative: str) -> bool:
    """Whether ``repo/relative`` is a file that, with symlinks resolved, stays in ``repo``."""
    path = repo / relative
    if not path.is_file():
        return False
    try:
        path.resolve(strict=True).relative_to(repo.resolve(strict=True))
    except (OSError, ValueError):
        return False
    return True


def resolve_compose_file(repo: Path, requested: str | None) -> str:
    """The compose file to run, as a path relative to ``repo``."""
    if requested is not None and requested != "":
        relative = check_compose_file(requested)
        if (repo / relative).is_file() and not _inside(repo, relative):
            raise ComposeFileError(
                f"compose_file {relative!r} is a symlink that leads out of the repo {repo}; "
                "point the input at a file inside the repository"
            )
        if not _inside(repo, relative):
            raise ComposeFileError(
                f"compose_file {relative!r} does not exist in the repo {repo}; check the path "
                "(it is relative to the repository root)"
            )
        return relative
    for candidate in CANDIDATES:
        if _inside(repo, candidate):
            return candidate
    raise ComposeFileError(
        f"no compose file in the repo {repo}: looked for {', '.join(CANDIDATES)} (in that "
        "order); add one of them, or pass --input compose_file=PATH"
    )
