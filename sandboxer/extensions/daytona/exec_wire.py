"""Exec through Daytona's toolbox with binary output, standard input and a way to stop it.

The toolbox's synchronous execute runs one command string and answers its combined
output as JSON *text* once it ends: bytes that are not UTF-8 do not survive it (a
binary file read through it came back corrupted), stdout and stderr arrive mixed, and
it takes no input. So every command runs inside :data:`WRAPPER`, a ``sh`` script that
keeps stdout and stderr in two temporary files and prints them base64-encoded after
markers; :func:`parse_output` decodes them byte for byte. A sandbox without
``base64`` or ``mktemp`` runs the command plain (text output, as before).

Standard input is sent ahead: a temporary file is made (``mktemp``) and filled by
executes that each append one base64 chunk (:func:`append_command`, well under the
kernel's 128 KiB limit on one argument); the command then reads that file, which the
wrapper deletes. Input is therefore held whole before the command starts, at most
the copy limit (``SANDBOXER_UPLOAD_MAX_MB``).

The command, and everything it starts, carries the marker of
:mod:`sandboxer.extensions.ssh_exec_stop` in its environment (through ``env``), so a
given-up exec is stopped by one more execute of the kill script.
"""

from __future__ import annotations

import base64
import binascii
import shlex
from collections.abc import Sequence

__all__ = [
    "INPUT_CHUNK",
    "MAKE_INPUT",
    "WRAPPER",
    "append_command",
    "parse_output",
    "wrapped_command",
]

STDOUT_MARK = "sandboxer-stdout"
STDERR_MARK = "sandboxer-stderr"
INPUT_CHUNK = 48 * 1024
"""Bytes of input per execute (64 KiB once in base64)."""

WRAPPER = r"""
i=$1
shift
[ -n "$i" ] || i=/dev/null
if command -v base64 >/dev/null 2>&1 && o=$(mktemp) && e=$(mktemp); then
  "$@" <"$i" >"$o" 2>"$e"
  s=$?
  [ "$i" = /dev/null ] || rm -f -- "$i"
  echo sandboxer-stdout
  base64 "$o"
  echo sandboxer-stderr
  base64 "$e"
  rm -f -- "$o" "$e"
  exit "$s"
fi
exec "$@" <"$i"
"""
"""``sh -c WRAPPER sh INPUT_FILE ARGV...`` (INPUT_FILE empty: no input)."""

MAKE_INPUT = shlex.join(["sh", "-c", "umask 077 && mktemp"])
"""Prints the path of a fresh, private, empty file for a command's input."""

_APPEND = 'printf %s "$2" | base64 -d >>"$1"'


def wrapped_command(argv: Sequence[str], marker: tuple[str, str], input_file: str = "") -> str:
    """The toolbox command string running ``argv`` in the wrapper, with the marker set."""
    name, value = marker
    return shlex.join(["env", f"{name}={value}", "sh", "-c", WRAPPER, "sh", input_file, *argv])


def append_command(input_file: str, chunk: bytes) -> str:
    """The toolbox command string appending ``chunk`` to ``input_file``."""
    encoded = base64.b64encode(chunk).decode("ascii")
    return shlex.join(["sh", "-c", _APPEND, "sh", input_file, encoded])


def parse_output(result: str) -> tuple[bytes, bytes]:
    """(stdout, stderr) of a wrapped command from the toolbox's ``result``; a result
    without the markers (no base64 in the sandbox) is all stdout, as text."""
    head, found, rest = result.lstrip("\n").partition(STDOUT_MARK + "\n")
    if head or not found:
        return result.encode(), b""
    out, found, err = rest.partition("\n" + STDERR_MARK + "\n")
    if not found and rest.startswith(STDERR_MARK + "\n"):  # no stdout at all
        out, found, err = "", STDERR_MARK, rest.removeprefix(STDERR_MARK + "\n")
    if not found:
        return result.encode(), b""
    try:
        return _decode(out), _decode(err)
    except (binascii.Error, ValueError):
        return result.encode(), b""


def _decode(text: str) -> bytes:
    return base64.b64decode("".join(text.split()), validate=True)
