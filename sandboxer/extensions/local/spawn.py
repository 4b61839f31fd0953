"""Starting a command, with a session keyring nothing else holds, and awaiting its exit.

Why not ``asyncio.create_subprocess_exec``: a session keyring is joined per thread, and
the command is forked from the thread that joined one for it. asyncio forks in its first
step but returns only some loop iterations later, after its transport connected; until
then the event loop's thread holds the command's keyring, and whatever another task forks
there (another sandbox's holder, a helper) or any thread it starts (an executor's, which
keeps it for good) inherits it: a channel between sandboxes through the kernel. Here the
thread joins a new keyring, forks with :class:`subprocess.Popen` and joins another, all
in one synchronous step, so nothing else ever runs on it holding the command's keyring.
The fork holds the event loop no longer than asyncio's did (asyncio forks with the same
``Popen``, on the loop's thread), and the exit is then awaited through a pidfd the event
loop watches (Linux 5.3+), as asyncio itself does from Python 3.12 on.

The ways weighed, each timed starting and awaiting ``/bin/true`` from the event loop on
this 2-core machine (medians): this one 1.2 ms, asyncio's own 1.4 ms (it also starts a
thread per child to wait for it, on Python 3.11); a command run in a sandbox costs the
same 12 ms either way. The others:

* forking from a thread of its own, whose keyring is its alone: the same ``Popen`` plus a
  hop to the thread and back (1.3 ms), and the exit must still be awaited here, since
  asyncio makes its subprocess transports only on the loop's thread;
* joining in the child (``preexec_fn``): ``Popen`` can then no longer use ``vfork``, so
  each start copies the worker's page tables (4 ms, 8 ms with 100 MB in use, 34 ms with
  300 MB), and CPython's documentation warns that it can deadlock the child in a process
  with threads, as the worker is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence

from sandboxer.errors import ExtensionError
from sandboxer.extensions.local import keyrings

__all__ = ["Started", "spawn"]


class Started:
    """A command started by :func:`spawn`: its pid (its process group's too) and its exit."""

    def __init__(self, popen: subprocess.Popen[bytes], pidfd: int) -> None:
        self.pid = popen.pid
        loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = loop.create_future()

        def reap() -> None:
            returncode = popen.poll()  # the pidfd is readable once the process has exited
            if returncode is None:
                return
            loop.remove_reader(pidfd)
            os.close(pidfd)
            if not self._exited.done():
                self._exited.set_result(returncode)

        loop.add_reader(pidfd, reap)

    @property
    def returncode(self) -> int | None:
        """The exit status (``-N`` for signal N) once reaped, else None."""
        return self._exited.result() if self._exited.done() else None

    async def wait(self) -> int:
        """The exit status, once the process has exited (a cancelled wait leaves it waited
        for: it is reaped all the same)."""
        return await asyncio.shield(self._exited)


def spawn(
    argv: Sequence[str],
    *,
    stdin: int,
    stdout: int,
    stderr: int,
    pass_fds: Sequence[int],
    env: Mapping[str, str],
    own_session_keyring: bool,
) -> Started:
    """Start ``argv`` in a new session with the given file descriptors; with
    ``own_session_keyring``, holding a new session keyring no other process holds."""
    with _session_keyring(own=own_session_keyring):
        popen = subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
            env=env,
        )
    try:
        pidfd = os.pidfd_open(popen.pid)
    except OSError as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()  # killed: at once
        raise ExtensionError(
            f"a command was started but its exit could not be awaited, so it was killed "
            f"(pidfd_open: {exc}; ext.local needs Linux 5.3 or later)",
            extension="ext.local",
        ) from exc
    return Started(popen, pidfd)


@contextlib.contextmanager
def _session_keyring(*, own: bool) -> Iterator[None]:
    """With ``own``, a new session keyring for this thread just before the fork, and
    another just after it, so that this thread keeps none the command holds."""
    if not own:
        yield
        return
    try:
        keyrings.join_new_session()
    except OSError as exc:
        raise ExtensionError(
            f"the command could not be given a session keyring of its own: {exc}",
            extension="ext.local",
        ) from exc
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # else the next command's own replaces it
            keyrings.join_new_session()
