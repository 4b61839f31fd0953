"""Copying a Daytona sandbox's workspace out through the toolbox's execute, for snapshots.

The toolbox answers a command's output as text, so the workspace travels as a
base64 tar; tar's own complaints go to a file and are shown only when it
fails, so they never mix into the archive. The archive is then unpacked
with the project's hostile-archive rules (:mod:`sandboxer.hosted.workspace_copy`),
so the copy restores on any backend.
"""

from __future__ import annotations

import base64
import binascii
import shlex
from pathlib import Path

from sandboxer.errors import WorkspaceRefused
from sandboxer.hosted.workspace_copy import too_large, unpack_tar_bytes
from sandboxer.workspaces.limits import ArchiveLimits

__all__ = ["PACK_COMMAND", "max_answer_chars", "unpack_answer"]

_PACK_SCRIPT = (
    "t=$(mktemp) && e=$(mktemp) || exit 70; "
    'if tar -cf "$t" . 2>"$e"; then base64 "$t"; s=$?; else cat "$e"; s=2; fi; '
    'rm -f "$t" "$e"; exit $s'
)
PACK_COMMAND = shlex.join(["sh", "-c", _PACK_SCRIPT])
"""Run in the workspace directory: prints the tree as a base64 tar (or tar's error)."""


def max_answer_chars(limits: ArchiveLimits) -> int:
    """The longest base64 answer an archive within the limits can give (with line breaks)."""
    encoded = (limits.max_bytes + 2) // 3 * 4
    return encoded + encoded // 76 + 1024


def unpack_answer(answer: str, destination: Path, limits: ArchiveLimits) -> int:
    """Decode the base64 tar and unpack it into ``destination``; the number of entries."""
    if len(answer) > max_answer_chars(limits):
        raise too_large(limits)
    try:
        data = base64.b64decode("".join(answer.split()), validate=True)
    except (binascii.Error, ValueError):
        raise WorkspaceRefused(
            "the workspace copy from the sandbox is not a base64 archive (does the sandbox "
            "have tar and base64?)"
        ) from None
    return unpack_tar_bytes(data, destination, limits)
