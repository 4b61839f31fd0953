"""A lock on a host, held across several commands: ``flock`` on a file there.

Two workers may act on one sandbox of an SSH host at once: a worker frozen (SIGSTOP) or cut
off from NATS past ``ack_wait`` goes on when it can, after its job went to another worker.
What must not interleave (a provisioning's look at what is there and its record of itself;
a teardown's read of that record and its removal) runs under the sandbox's lock on the
host, so the host, which both reach, orders them.

:data:`LOCK_FUNCTION` is the shell text that takes the lock (on fd 9), for a one-command
step that needs it (a create's claim: one round trip). :func:`remote_lock` holds it across
several commands: a shell on the host takes it and waits on its input; closing that input,
or losing the connection (sshd then closes the channel: a killed worker never holds a
sandbox), ends the shell and releases the lock. The lock file may be removed by its holder
(with the sandbox it guards); whoever was waiting on the removed file sees that its inode is
no longer the path's and locks afresh, so a lock file is removed only while held and only
while the path still names it, as ext.local's ``sandbox_lock`` does on its machine.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import shlex
from collections.abc import AsyncIterator, Collection, Iterable

from sandboxer.errors import HostUnreachable, RemoteCommandFailed
from sandboxer.ssh.connection import Connection

__all__ = [
    "LOCK_BUSY",
    "LOCK_FUNCTION",
    "NO_FLOCK",
    "RemoteLock",
    "first_token",
    "lock_failed",
    "remote_lock",
]

LOCK_BUSY = "LOCK-BUSY"
"""What :data:`LOCK_FUNCTION` prints when another holder kept the lock past the wait."""
NO_FLOCK = "NO-FLOCK"
"""What it prints when the host has no ``flock`` (util-linux, or busybox's)."""
_ANSWER_MARGIN = 15.0
"""Seconds the client waits for the host's answer beyond the lock's own wait."""

# take_lock FILE SECONDS: hold FILE's flock on fd 9, waiting at most SECONDS; prints
# LOCK-BUSY (or NO-FLOCK) and exits when it cannot. A file its holder removed while this
# shell waited on it is not the path's any more (its inode differs): lock the new one.
LOCK_FUNCTION = r"""
same_file() { [ "$(stat -L -c %d:%i -- "$1" 2>/dev/null)" = "$(stat -L -c %d:%i /dev/fd/9)" ]; }
take_lock() {
  command -v flock >/dev/null 2>&1 || { echo NO-FLOCK; exit 0; }
  while :; do
    exec 9>>"$1" || exit 1
    flock -w "$2" 9 || { echo LOCK-BUSY; exit 0; }
    same_file "$1" && return 0
    exec 9>&-
  done
}
"""

# $1 the directory of the lock file, $2 the lock file, $3 seconds to wait, $4 "make" to
# make the directory when missing (else ABSENT: nothing is there to guard). Prints LOCKED
# once held, then holds it until its input ends; a first input line REMOVE removes the
# file (still held, and only if the path still names it) before it lets go.
_HOLD_SCRIPT = (
    LOCK_FUNCTION
    + r"""
if [ ! -d "$1" ]; then
  if [ "$4" = make ]; then mkdir -p -- "$1" || exit 1; else echo ABSENT; exit 0; fi
fi
take_lock "$2" "$3"
echo LOCKED
IFS= read -r then || then=
if [ "$then" = REMOVE ] && same_file "$2"; then rm -f -- "$2"; fi
exit 0
"""
)


_HOLD_TOKENS = frozenset({"ABSENT", "LOCKED", LOCK_BUSY, NO_FLOCK})
"""What :data:`_HOLD_SCRIPT` answers first: one of these, on a line of its own."""


def first_token(lines: Iterable[str], tokens: Collection[str]) -> str | None:
    """The first of ``lines`` that is one of ``tokens`` (stripped), None when none is.

    Lines before it are skipped: a host's shell startup (``~/.bashrc``, a profile) may print
    before the script does, and the scan and probe steps already read their own lines
    among others the same way."""
    for line in lines:
        if line.strip() in tokens:
            return line.strip()
    return None


class RemoteLock:
    """A lock :func:`remote_lock` holds on a host."""

    def __init__(self) -> None:
        self.removing = False

    def remove(self) -> None:
        """Remove the lock file when it is let go (still held then): the caller removed what
        it guards. Never another holder's file: see the module's docstring."""
        self.removing = True


def lock_failed(answer: str, path: str, host: str, wait: float) -> RemoteCommandFailed | None:
    """The error for a lock :data:`LOCK_FUNCTION` did not take (``answer``: its output line),
    None when it took it."""
    if answer == LOCK_BUSY:
        return RemoteCommandFailed(
            f"another worker has held the lock {path} on host {host} for over {wait:.0f}s "
            "(a step on the same sandbox, or a worker frozen while it held it); run the "
            "command again once that step is done",
            exit_status=1,
        )
    if answer == NO_FLOCK:
        return RemoteCommandFailed(
            f"host {host} has no 'flock' command, which sandboxer needs to keep two workers "
            "from acting on one sandbox at once; install util-linux there (see docs/hosts.md)",
            exit_status=127,
        )
    return None


@contextlib.asynccontextmanager
async def remote_lock(
    conn: Connection, directory: str, path: str, *, wait: float, host: str, make: bool = False
) -> AsyncIterator[RemoteLock | None]:
    """Hold the flock of ``path`` (in ``directory``) on the host of ``conn`` for the block.

    None (nothing held) when ``directory`` is missing and ``make`` is False: nothing that the
    lock guards can be there. :class:`RemoteCommandFailed` when another holder keeps it past
    ``wait`` seconds or the host has no ``flock``; :class:`HostUnreachable` when the
    connection fails."""
    import asyncssh

    argv = ["sh", "-c", _HOLD_SCRIPT, "sh", directory, path, f"{wait:g}", "make" if make else ""]
    line = " ".join(shlex.quote(word) for word in argv)
    try:
        process = await conn.create_process(line, encoding="utf-8", errors="replace")
    except (asyncssh.Error, OSError) as exc:
        raise HostUnreachable(
            f"the SSH connection to {host} failed while taking the lock {path} ({exc}); check "
            "that the host is up and retry"
        ) from exc
    held = RemoteLock()
    try:
        try:
            async with asyncio.timeout(wait + _ANSWER_MARGIN):
                # Skip what the host's shell startup printed, up to the script's answer.
                skipped: collections.deque[str] = collections.deque(maxlen=20)
                while (line := await process.stdout.readline()) and (
                    line.strip() not in _HOLD_TOKENS
                ):
                    skipped.append(line.strip())
                answer = line.strip()
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            raise HostUnreachable(
                f"host {host} did not answer while sandboxer took the lock {path} ({exc}); "
                "check that the host is up and retry"
            ) from exc
        if answer == "ABSENT":
            yield None
            return
        failed = lock_failed(answer, path, host, wait)
        if failed is not None:
            raise failed
        if answer != "LOCKED":
            stderr = ""
            with contextlib.suppress(asyncssh.Error, OSError, TimeoutError):
                async with asyncio.timeout(2):
                    stderr = await process.stderr.read()
            said = stderr.strip() or "\n".join(skipped)[-500:]
            raise RemoteCommandFailed(
                f"taking the lock {path} on host {host} failed: {said!r}",
                exit_status=1,
                output_tail=stderr[-2000:],
            )
        yield held
        # Let go: REMOVE first when the caller removed what the lock guards.
        with contextlib.suppress(asyncssh.Error, OSError, TimeoutError):
            process.stdin.write("REMOVE\n" if held.removing else "\n")
            process.stdin.write_eof()
            async with asyncio.timeout(_ANSWER_MARGIN):
                await process.wait()
    finally:
        # Closing the channel ends the shell on the host, which releases the lock, whatever
        # happened in the block (an error, a cancel): it is never left held.
        process.close()
