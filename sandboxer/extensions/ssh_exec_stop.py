"""Stopping what an exec started on an SSH host (or in a compose container) when the exec is
given up: its timeout passed, its client went away (the exec service checks that its reply
inbox is still subscribed: :mod:`sandboxer.workers.exec_service`), its output could not be
delivered.

Closing the SSH channel does not stop a remote command (see :mod:`sandboxer.ssh.deadline`),
and ``docker|podman exec`` does not stop the process it started in a container when its
own client dies. So each exec carries a marker in its environment,
``SANDBOXER_EXEC_ID=<random>``, which everything it starts inherits; giving the exec up
runs :data:`KILL_SCRIPT` where the command ran, which stops every process whose
environment holds that marker and then sends them SIGKILL, pass after pass until none is
left (a process may fork while a pass runs). The script's own environment lacks the marker (it is an
argument there), so it never kills itself. It needs ``sh``, ``tr``, ``grep`` and a
Linux ``/proc`` where it runs; where they are missing, the command is left to end on
its own and the failure is logged.

A worker killed during an exec can give nothing up, and closing its channel stops nothing
on the host: an exec without stdin therefore runs under the host's watcher on its channel
(:func:`sandboxer.ssh.deadline.with_deadline`), which kills the command's process group
when the channel closes first and runs :func:`on_close_line` there, the same stopping
as above, so what left the group (or runs in a container) goes too. An exec with stdin
has its input framed on the channel so that the same watcher sees the channel's end, and
its output watched as well, for a command that does not read its input.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable

from sandboxer.ssh import deadline

__all__ = [
    "KILL_SCRIPT",
    "MARKER_NAME",
    "STOP_TIMEOUT",
    "kill_argv",
    "new_marker",
    "on_close_line",
    "stoppable",
]

log = logging.getLogger(__name__)

MARKER_NAME = "SANDBOXER_EXEC_ID"
STOP_TIMEOUT = 20.0
"""Seconds the stopping command may take before the exec gives up on it."""

# $1 is NAME=VALUE, the marker. /proc/PID/environ is NUL-separated. A pass stops every
# marked process first and kills them all after: killed one by one, in /proc's order (not
# the tree's), a shell whose child died before its own turn came ran its next command
# (`sleep 27; echo late > f` wrote f as the pass went on). A stopped process runs nothing.
# `2>/dev/null` comes before the input's redirection: redirections apply in order, and the
# shell reports one that fails (another user's environ, a process gone) on the stderr in
# place when it fails, which would be the stop's own, once per process per pass.
KILL_SCRIPT = r"""
m=$1
n=0
while [ "$n" -lt 50 ]; do
  n=$((n + 1))
  found=
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    [ "$p" = "$$" ] && continue
    if tr '\000' '\n' 2>/dev/null < "$d/environ" | grep -qxF -e "$m"; then
      kill -STOP "$p" 2>/dev/null && found="$found $p"
    fi
  done
  [ -n "$found" ] || exit 0
  kill -KILL $found 2>/dev/null
done
exit 1
"""


def new_marker() -> tuple[str, str]:
    """A fresh marker as (name, value)."""
    return MARKER_NAME, secrets.token_hex(16)


def kill_argv(name: str, value: str) -> list[str]:
    """The command that kills every process carrying the marker ``name=value``."""
    return ["sh", "-c", KILL_SCRIPT, "sh", f"{name}={value}"]


def on_close_line(*lines: str) -> str:
    """The stopping command ``lines`` (each from :func:`sandboxer.ssh.command_line`, around a
    :func:`kill_argv`) as one that the host runs when an exec's channel closes before its
    exit, within :data:`STOP_TIMEOUT`."""
    return deadline.with_deadline("; ".join(lines), STOP_TIMEOUT)


async def stoppable(
    run: Callable[[str, str], Awaitable[int]],
    stop: Callable[[list[str]], Awaitable[object]],
    *,
    what: str,
) -> int:
    """``run(name, value)`` with a fresh marker; when it ends by raising (cancelled
    included), ``stop(kill_argv(...))`` first, bounded and never raising, then the error."""
    name, value = new_marker()
    try:  # awaiting in the handler works after a cancellation: a task is cancelled once
        return await run(name, value)
    except BaseException:
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await stop(kill_argv(name, value))
        except Exception as exc:
            log.warning("could not stop what %s started: %r", what, exc)
        raise
