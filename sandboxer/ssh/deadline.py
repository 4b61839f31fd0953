"""Deadlines enforced on the host, so a command that times out is stopped there.

Closing the SSH channel does not stop a remote command: OpenSSH refuses
signals from the client for root sessions ("session signalling requires
privilege separation"), and without a terminal nothing sends a hangup. So
the deadline travels with the command and the host enforces it.

:func:`with_deadline` wraps a command line so that coreutils ``timeout``
runs it in a process group of its own, sends that group SIGTERM at the
deadline and SIGKILL :data:`KILL_GRACE` seconds later if the command is
still there. ``timeout`` stops escalating once the command it started has
exited, which would spare children that ignore SIGTERM (a trap, a daemon
started by a script); so when ``timeout`` reports the deadline (exit 124,
or 137 after its SIGKILL) the wrapper sends SIGKILL to the whole group as
well. Pure: text in, text out; the host needs a POSIX ``sh`` and coreutils
``timeout`` (see docs/hosts.md), and GNU ``tail`` to stop a streamed command that
does not read its input when its client goes (see the wrapper's notes).
"""

from __future__ import annotations

import shlex

from sandboxer.errors import InvalidInput

__all__ = [
    "END_OF_INPUT",
    "KILL_GRACE",
    "TIMED_OUT_STATUSES",
    "WRAPPER_MISSING",
    "client_wait",
    "frame",
    "seconds_text",
    "timed_out",
    "with_deadline",
    "wrapper_missing",
]

KILL_GRACE = 5.0
"""Seconds between the SIGTERM at the deadline and the SIGKILL of what is left."""
END_OF_INPUT = b"0\n"
"""The frame that ends a ``framed`` command's input (the channel stays open: see with_deadline)."""
RETURN_MARGIN = 10.0
"""Seconds past the host's own kill that the client still waits for the host to report it."""
TIMED_OUT_STATUSES = frozenset({124, 137})
"""``timeout``'s exit status after SIGTERM did it (124) or its SIGKILL did (128 + 9)."""
WRAPPER_MISSING = 127
"""The shell's status for a command it cannot find, ``timeout`` included."""

# $1 kill grace, $2 limit, $3 the command line (for $4 and $5 see below). Standard
# input is handed to the command through fd 3 because a non-interactive shell
# gives background jobs /dev/null as stdin. `timeout` (not --foreground) makes its
# own process group, whose id is its pid, which the wrapper kills after a
# deadline so that nothing the command started outlives it. With "watch" the
# command gets /dev/null, and a watcher (no child of its own, so killing it ends
# it) reads the channel's input, which the client never writes nor closes: its
# end means the channel closed (the client gave up, or its connection dropped:
# a killed worker), and the watcher kills the group then. Before that it starts $5
# (if given) as a job of its own, which outlives the watcher (the wrapper kills it as
# soon as the group's leader is gone): the clean-up of what left the group, an exec's
# marked processes, in a container too (sandboxer/extensions/ssh_exec_stop.py).
# With "feed" the channel carries the command's input as frames (see frame()), so that
# the end of the input (frame "0") and the end of the channel stay apart: the watcher
# copies each frame's bytes with `head -c`, which reads no further than it is told (the
# shell's `read` takes the length line byte by byte), into a FIFO the command reads;
# after the last frame it closes the FIFO (the command's end of input) and watches the
# channel as above. A command that stops reading its input ends a copy with SIGPIPE:
# the rest is read and dropped. A channel that ends before the last frame (the worker
# killed mid-input) kills the group before the FIFO closes: closed first, it told the
# command its input had ended, and a command that then acted on the part it had (wrote
# it, committed it) did so before the kill came. Busybox's `head -c` reads ahead (stdio)
# and loses what it read past its count: such a host is refused (exit 125, stderr says
# why) rather than given an input cut and mixed up; a busybox `sh` runs its own `head`
# whatever PATH holds, so the test is of what `sh` runs. The FIFO's directory is removed
# as soon as both ends are open (opening one end waits for the other). Killed at the exit, this watcher may
# leave its `head` or `cat` reading the channel: they end when the channel closes.
# A command that holds its input but never reads it holds the copy back once the FIFO is
# full, and then nothing reads the channel, so its end (behind the data) is never seen. So
# a second watcher looks at the channel's output instead: GNU `tail -f` exits by SIGPIPE
# (141) as soon as its output, the channel's, has no reader (sshd went with the
# connection), and the watcher then does what the first does at the channel's end. Any
# other end of `tail` (missing, or too old to watch its output) changes nothing. The
# wrapper ends it at the exit with SIGTERM, which its trap passes on to `tail`, so
# nothing holds the channel's output past the exit; once it has fired it no longer
# traps SIGTERM, and the clean-up job it started is not its to end.
# $4 "watch", "feed" or nothing, $5 that clean-up line. $2 is 0 for a command
# without a deadline (`timeout` never fires then): its group is left alone after its
# exit, as what an exec leaves running on purpose (a server it started) belongs to it.
# `wait` says nothing: the shell's "Terminated" for a job a signal ended is not the
# command's output (an exec's status says it: 128 + N).
_WRAPPER = r"""
exec 3<&0
watcher=
output=
if [ "$4" = watch ]; then
  timeout -k "$1" "$2" sh -c "$3" </dev/null 3<&- &
  group=$!
  sh -c 'while IFS= read -r _; do :; done
    if [ -n "$2" ]; then sh -c "$2" </dev/null & fi
    kill -KILL "-$1" 2>/dev/null' sh "$group" "${5-}" \
    <&3 >/dev/null 2>&1 &
  watcher=$!
elif [ "$4" = feed ]; then
  if [ "$(printf ab | { head -c 1 >/dev/null; cat; })" != b ]; then
    echo "sandboxer: this host's head -c reads past the count it is given (busybox's" \
      "does), so a streamed input would reach the command cut or mixed up: give the" \
      "host GNU coreutils' head, run by its sh" >&2
    exit 125
  fi
  fifo=$(mktemp -d) && mkfifo "$fifo/in" || exit 125
  timeout -k "$1" "$2" sh -c "$3" <"$fifo/in" 3<&- &
  group=$!
  sh -c 'rm -r "$3"
    while IFS= read -r n && [ "$n" != 0 ]; do head -c "$n" || { n=0; break; }; done
    if [ "$n" != 0 ]; then kill -KILL "-$1" 2>/dev/null; fi
    exec >/dev/null
    cat
    if [ -n "$2" ]; then sh -c "$2" </dev/null & fi
    kill -KILL "-$1" 2>/dev/null' sh "$group" "${5-}" "$fifo" \
    <&3 >"$fifo/in" 2>/dev/null &
  watcher=$!
  sh -c 'trap "kill -KILL \$! 2>/dev/null; exit 0" TERM
    tail -f /dev/null &
    wait "$!"
    if [ "$?" -ne 141 ]; then exit 0; fi
    trap - TERM
    if [ -n "$2" ]; then sh -c "$2" </dev/null >/dev/null & fi
    kill -KILL "-$1"' sh "$group" "${5-}" </dev/null 2>/dev/null 3<&- &
  output=$!
else
  timeout -k "$1" "$2" sh -c "$3" <&3 3<&- &
  group=$!
fi
exec 3<&-
wait "$group" 2>/dev/null
status=$?
if [ -n "$watcher" ]; then kill -KILL "$watcher" 2>/dev/null; fi
if [ -n "$output" ]; then kill -TERM "$output" 2>/dev/null; fi
if [ "$2" != 0 ] && { [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; }; then
  kill -KILL "-$group" 2>/dev/null
fi
exit "$status"
"""


def seconds_text(seconds: float) -> str:
    """``seconds`` as a plain decimal that ``timeout`` accepts (never ``1e+06``)."""
    if seconds <= 0:
        raise InvalidInput(f"a deadline must be positive, not {seconds!r}")
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def with_deadline(
    line: str,
    seconds: float | None,
    *,
    watch: bool = False,
    framed: bool = False,
    on_close: str | None = None,
) -> str:
    """``line`` as a command line that the host stops, with all it started, after ``seconds``
    (``None``: never, only on the channel's end with ``watch``: a ``sandboxer exec``).

    ``watch``: the command reads nothing (its input is ``/dev/null``), and the host also
    stops it, with all it started, once the channel's input ends, which the caller keeps
    open until it has the command's exit: the channel closed, so the caller gave the
    command up or its connection dropped. A worker killed while its command runs (a
    compose ``up``, a setup step) no longer leaves it running on the host beside the next
    attempt, after the sandbox's lock on the host went with the connection. ``framed``
    (implies ``watch``): the command reads what the caller writes as :func:`frame` s, up to
    :data:`END_OF_INPUT`, and the channel is watched as with ``watch`` (the caller writes
    no end of file); the channel's output going away stops it too, as a command that does
    not read its input holds the copy back, and the channel's end behind it is never read.
    ``on_close`` (with ``watch``): a command line the host runs then too,
    bound by a deadline of its own, to stop what left the group (an exec's marked
    processes)."""
    mode = "feed" if framed else "watch" if watch else None
    words = [
        "sh",
        "-c",
        _WRAPPER,
        "sh",
        seconds_text(KILL_GRACE),
        "0" if seconds is None else seconds_text(seconds),
        line,
        *([mode, *([on_close] if on_close else [])] if mode else []),
    ]
    return " ".join(shlex.quote(word) for word in words)


def frame(chunk: bytes) -> bytes:
    """``chunk`` as one frame of a ``framed`` command's input: its length in decimal on a
    line of its own, then its bytes. Empty chunks are not framed (``0`` ends the input)."""
    if not chunk:
        raise InvalidInput("an empty chunk is not a frame: a frame of length 0 ends the input")
    return b"%d\n%b" % (len(chunk), chunk)


def client_wait(seconds: float) -> float:
    """How long the client waits for a command with this deadline before it gives up on the host."""
    return seconds + KILL_GRACE + RETURN_MARGIN


def timed_out(exit_status: int, elapsed: float, seconds: float) -> bool:
    """Whether an exit status means the host stopped the command at its deadline.

    A command may exit 124 on its own; only one that also ran for the whole
    deadline counts as stopped by it.
    """
    return exit_status in TIMED_OUT_STATUSES and elapsed >= seconds * 0.99


def wrapper_missing(stderr: str) -> bool:
    """Whether the host's shell said it has no ``timeout`` (rather than the command's own 127)."""
    return any("timeout" in line and "not found" in line for line in stderr.splitlines()[:3])
