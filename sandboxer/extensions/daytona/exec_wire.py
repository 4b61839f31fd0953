"""Exec through Daytona's toolbox with binary output, standard input and a way to stop it.

The toolbox's synchronous execute runs one command string and answers its combined
output as JSON *text* once it ends: bytes that are not UTF-8 do not survive it (a
binary file read through it came back corrupted), stdout and stderr arrive mixed, and
it takes no input. So every command runs inside :data:`WRAPPER`, a ``sh`` script that
keeps stdout and stderr in two temporary files and prints them base64-encoded after
markers; :func:`parse_output` decodes them byte for byte. A sandbox without
``base64``, ``head`` or ``mktemp`` runs the command plain (text output, as before).

The toolbox answers the whole output at once, and the worker must hold it: so the
wrapper prints at most one byte more than the cap of each stream (``head -c``),
and the worker, seeing that byte, keeps the cap and says the rest was dropped. A
sandbox can lie (its tenant may replace ``head``), so the worker also reads the
answer itself only up to what a capped one can be (:func:`answer_bytes`).

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
    "CONTROL_ANSWER_BYTES",
    "INPUT_CHUNK",
    "MAKE_INPUT",
    "MAX_OUTPUT",
    "WRAPPER",
    "answer_bytes",
    "append_command",
    "parse_output",
    "wrapped_command",
]

STDOUT_MARK = "sandboxer-stdout"
STDERR_MARK = "sandboxer-stderr"
INPUT_CHUNK = 48 * 1024
"""Bytes of input per execute (64 KiB once in base64)."""

MAX_OUTPUT = 16 * 1024 * 1024
"""Of each of stdout and stderr, the most an exec delivers (what the HTTP API's exec keeps)."""
CONTROL_ANSWER_BYTES = 1024 * 1024
"""The most read of the answer to one of our own small commands (mktemp, an input chunk, the
kill script): they print a line, but run in a sandbox whose programs its tenant may replace."""
ANSWER_SLACK = 64 * 1024
"""Room in an answer for the JSON around the output, the markers and a stray line."""

WRAPPER = r"""
i=$1
shift
[ -n "$i" ] || i=/dev/null
if command -v base64 >/dev/null 2>&1 && command -v head >/dev/null 2>&1 &&
  o=$(mktemp) && e=$(mktemp); then
  "$@" <"$i" >"$o" 2>"$e"
  s=$?
  [ "$i" = /dev/null ] || rm -f -- "$i"
  echo sandboxer-stdout
  head -c "$m" "$o" | base64
  echo sandboxer-stderr
  head -c "$m" "$e" | base64
  rm -f -- "$o" "$e"
  exit "$s"
fi
exec "$@" <"$i"
"""
"""``sh -c 'm=CAP+1' WRAPPER sh INPUT_FILE ARGV...`` (INPUT_FILE empty: no input); each
stream is printed up to ``m`` bytes, one past the cap, so that the worker sees a cut."""

MAKE_INPUT = shlex.join(["sh", "-c", "umask 077 && mktemp"])
"""Prints the path of a fresh, private, empty file for a command's input."""

_APPEND = 'printf %s "$2" | base64 -d >>"$1"'


def wrapped_command(
    argv: Sequence[str],
    marker: tuple[str, str],
    input_file: str = "",
    max_output: int = MAX_OUTPUT,
) -> str:
    """The toolbox command string running ``argv`` in the wrapper, with the marker set, each
    of its streams printed up to one byte past ``max_output``."""
    name, value = marker
    script = f"m={int(max_output) + 1}" + WRAPPER
    return shlex.join(["env", f"{name}={value}", "sh", "-c", script, "sh", input_file, *argv])


def answer_bytes(*sizes: int) -> int:
    """The most bytes of the toolbox's JSON answer that carries streams of these ``sizes``
    as wrapped base64 (76 characters a line, each line break two bytes in JSON)."""
    total = ANSWER_SLACK
    for size in sizes:
        encoded = (size + 2) // 3 * 4
        total += encoded + 2 * (encoded // 76 + 1)
    return total


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
