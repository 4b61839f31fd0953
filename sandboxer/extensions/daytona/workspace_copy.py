"""Copying a Daytona sandbox's workspace out through the toolbox's execute, for snapshots.

The toolbox answers a command's output as text, so the workspace travels as a
base64 tar; tar's own complaints go to a file and are shown only when it
fails, so they never mix into the archive. The toolbox answers the whole
output at once, so the sandbox cuts the tar one byte past the copy limit
(``head -c``) and, when it was cut, answers only :data:`TOO_LARGE`: a large
workspace is refused without crossing the network, and tar stops early. The
worker still reads the answer only up to what an archive within the limit
can be (:func:`answer_limit`), since the sandbox's programs are its tenant's.
The archive is then unpacked with the project's hostile-archive rules
(:mod:`sandboxer.hosted.workspace_copy`), so the copy restores on any backend.
"""

from __future__ import annotations

import base64
import binascii
import shlex
from pathlib import Path

from sandboxer.domain.left_out import LeftOut
from sandboxer.errors import WorkspaceRefused
from sandboxer.extensions.daytona.exec_wire import answer_bytes
from sandboxer.hosted.workspace_copy import too_large, unpack_tar_bytes
from sandboxer.workspaces.limits import ArchiveLimits

__all__ = [
    "TOO_LARGE",
    "TOO_LARGE_EXIT",
    "answer_limit",
    "max_answer_chars",
    "pack_command",
    "unpack_answer",
]

TOO_LARGE = "sandboxer-too-large"
TOO_LARGE_EXIT = 3

# $1 is the limit in bytes. tar's exit status is kept in a file, since a pipe gives only
# head's; a tar cut by head dies of SIGPIPE, so the size is looked at first.
_PACK_SCRIPT = (
    "t=$(mktemp) && e=$(mktemp) && x=$(mktemp) || exit 70; "
    '{ tar -cf - . 2>"$e"; echo $? >"$x"; } | head -c $(($1 + 1)) >"$t"; '
    f'if [ $(wc -c <"$t") -gt "$1" ]; then echo {TOO_LARGE}; s={TOO_LARGE_EXIT}; '
    'elif [ "$(cat "$x")" = 0 ]; then base64 "$t"; s=$?; '
    'else cat "$e"; s=2; fi; '
    'rm -f "$t" "$e" "$x"; exit $s'
)


def pack_command(limits: ArchiveLimits) -> str:
    """Run in the workspace directory: prints the tree as a base64 tar, or tar's error, or
    :data:`TOO_LARGE` (exit :data:`TOO_LARGE_EXIT`) when the tar is over the limit."""
    return shlex.join(["sh", "-c", _PACK_SCRIPT, "sh", str(limits.max_bytes)])


def answer_limit(limits: ArchiveLimits) -> int:
    """The most bytes of the toolbox's answer read for a pack: an archive within the limits."""
    return answer_bytes(limits.max_bytes)


def max_answer_chars(limits: ArchiveLimits) -> int:
    """The longest base64 answer an archive within the limits can give (with line breaks)."""
    encoded = (limits.max_bytes + 2) // 3 * 4
    return encoded + encoded // 76 + 1024


def unpack_answer(answer: str, destination: Path, limits: ArchiveLimits) -> LeftOut:
    """Decode the base64 tar and unpack it into ``destination``; what it left out."""
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
