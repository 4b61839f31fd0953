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

    def __init__(self, pid: int, exited: asyncio.Future[int]) -> None:
        self.pid = pid
        self._exited = exited

    @property
    def returncode(self) -> int | None:
        """The exit status (``-N`` for signal N) once reaped, else None."""
        return self._exited.result() if self._exited.done() else None

    async def wait(self) -> int:
        """The exit status, once the process has exited (a cancelled wait leaves it waited
        for: it is reaped all the same)."""
        return await asyncio.shield(self._exited)


async def spawn(
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
    ``own_session_keyring``, holding a new session keyring no other process holds.

    A coroutine only for the rare way out: when the command's exit cannot be watched, it
    is killed and awaited before :class:`ExtensionError` is raised. Otherwise it returns
    without suspending, so the caller's step forks the command.
    """
    with _session_keyring(own=own_session_keyring):
        popen = subprocess.Popen(  # noqa: ASYNC220 (on this thread, between the joins)
            argv,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
            env=env,
        )
    # Nothing above awaited: the joins and the fork were one synchronous step.
    try:
        return Started(popen.pid, _watch_exit(popen))
    except ExtensionError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        # Not popen.wait(): on the loop's thread that blocks every sandbox's work for as
        # long as the killed command takes to go, which is for ever while it sits frozen
        # by a cgroup freezer (a paused sandbox) or stuck in the kernel.
        await _reaped(popen)
        raise


def _watch_exit(popen: subprocess.Popen[bytes]) -> asyncio.Future[int]:
    """The command's exit status, set by the event loop once its pidfd turns readable
    (the pidfd is closed then); ExtensionError if it cannot be watched, its pidfd closed."""
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[int] = loop.create_future()
    try:
        pidfd = os.pidfd_open(popen.pid)
    except OSError as exc:
        raise _unwatched(f"pidfd_open: {exc}; ext.local needs Linux 5.3 or later") from exc

    def reap() -> None:
        returncode = popen.poll()  # the pidfd is readable once the process has exited
        if returncode is None:
            return
        loop.remove_reader(pidfd)
        os.close(pidfd)
        if not exited.done():
            exited.set_result(returncode)

    try:
        loop.add_reader(pidfd, reap)
    except Exception as exc:  # the loop's own (NotImplementedError, OSError from epoll...)
        os.close(pidfd)
        raise _unwatched(f"the event loop cannot watch its pidfd: {exc!r}") from exc
    return exited


def _unwatched(why: str) -> ExtensionError:
    return ExtensionError(
        f"a command was started but its exit could not be awaited, so it was killed ({why})",
        extension="ext.local",
    )


async def _reaped(popen: subprocess.Popen[bytes]) -> int:
    """``popen``'s exit status once it has exited, asked without blocking (``waitpid`` with
    ``WNOHANG``) a little less often each time: the way when no pidfd watches it. If the
    waiter is cancelled first, ``subprocess`` keeps the unreaped child and reaps it at a
    later ``Popen``."""
    delay = 0.001  # a killed process is gone within a millisecond or two
    while (returncode := popen.poll()) is None:
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)
    return returncode


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
