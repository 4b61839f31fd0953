"""Starting a sandbox's holder so that it outlives the worker that started it.

How the holder is detached (the simplest robust way found): the worker runs a
short ``/bin/sh`` launcher in a new session. The launcher moves itself into
the sandbox's cgroups, starts bwrap in the background, prints bwrap's pid and
exits at once. The worker only ever waits for that launcher (asyncio reaps it
normally); bwrap is orphaned immediately and reparented to init, so:

* no asyncio subprocess transport refers to the holder, so none is garbage
  collected noisily or kills it when the event loop closes;
* the worker never has to ``wait()`` for the holder, and its death or restart
  leaves the sandbox running, ready for adoption;
* the new session keeps terminal signals (Ctrl-C on the worker) away from it.

bwrap reports the host pid of the sandbox's init through ``--info-fd``, a pipe
the worker reads until bwrap closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sandboxer.errors import ExtensionError
from sandboxer.extensions.local.bwrap_command import holder_argv, launcher_argv
from sandboxer.extensions.local.procs import ProcessRef, children_of, command_name

__all__ = ["Holder", "read_pipe", "spawn_holder", "tail"]

HOST_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


@dataclass(frozen=True)
class Holder:
    holder: ProcessRef
    """The sandbox's init (pid 1 inside), in host pid terms: the nsenter target."""
    monitor: ProcessRef | None
    """The outer bwrap process, which only waits for the holder (None if already gone)."""


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


async def pipe_chunks(fd: int) -> AsyncIterator[bytes]:
    """Yield what arrives on ``fd`` until EOF without blocking the event loop; closes ``fd``."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    pipe = os.fdopen(fd, "rb", buffering=0)
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
    except BaseException:
        pipe.close()
        raise
    try:
        while chunk := await reader.read(65536):
            yield chunk
    finally:
        transport.close()


async def read_pipe(fd: int) -> bytes:
    """Everything written to ``fd`` until EOF; closes ``fd``."""
    return b"".join([chunk async for chunk in pipe_chunks(fd)])


async def launch_detached(
    argv: list[str],
    said_read: int,
    said_write: int,
    join_files: Sequence[Path],
    log_file: Path,
    timeout: float,
    *,
    also: Sequence[int] = (),
) -> tuple[int | None, bytes, bytes]:
    """Start ``argv`` detached from the caller (its own session, past a worker restart) through
    the launcher, which prints the pid; ``said_write`` is passed on for the process to report
    on, and the descriptors ``also`` as they are (the caller keeps and closes them). Returns
    the launcher's exit status, what it printed, and what was written to ``said_read`` until
    EOF. Closes both ends of the pipe; a launcher that overruns is killed.
    """
    log = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    try:
        launcher = await asyncio.create_subprocess_exec(
            *launcher_argv(join_files, argv, background=True),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            pass_fds=(said_write, *also),
            start_new_session=True,
            env=HOST_ENV,
        )
    except BaseException:
        os.close(said_read)
        raise
    finally:
        os.close(said_write)
        os.close(log)
    said_task = asyncio.ensure_future(read_pipe(said_read))
    try:
        async with asyncio.timeout(timeout):
            out, _ = await launcher.communicate()
        async with asyncio.timeout(timeout):  # a ``timeout`` of its own, as each wait had
            said = await said_task
    except BaseException:
        said_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await said_task
        if launcher.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(launcher.pid, signal.SIGKILL)
            await launcher.wait()
        raise
    return launcher.returncode, out, said


async def spawn_holder(
    *,
    sandbox_id: str,
    workspace: Path,
    read_only: bool,
    join_files: Sequence[Path],
    log_file: Path,
    as_root: bool,
    bwrap: str,
    users: tuple[str, str],
    timeout: float = 10.0,
    netns: Path | None = None,
    nsenter: str = "/usr/bin/nsenter",
    bind_workspace: bool = True,
) -> Holder:
    """Start the holder detached from the caller and return its identity.

    With ``netns`` (a ``/run/netns`` file) bwrap starts inside that network
    namespace and keeps it: nsenter execs bwrap, so the pid stays the same.
    ``users``, the text of its ``passwd`` and ``group``, name the sandbox's users
    (:mod:`.sandbox_users`): bwrap reads them from pipes.
    """
    user_fds: list[int] = []
    try:
        for text in users:
            user_fds.append(_data_pipe(text))
        info_read, info_write = os.pipe()
        argv = holder_argv(
            sandbox_id=sandbox_id,
            workspace=workspace,
            read_only=read_only,
            info_fd=info_write,
            as_root=as_root,
            bwrap=bwrap,
            share_net=netns is not None,
            bind_workspace=bind_workspace,
            user_fds=(user_fds[0], user_fds[1]),
        )
        if netns is not None:
            argv = [nsenter, f"--net={netns}", "--", *argv]
        returncode, out, info = await launch_detached(
            argv, info_read, info_write, join_files, log_file, timeout, also=user_fds
        )
    finally:
        for fd in user_fds:
            os.close(fd)
    spawned = _identify(sandbox_id, returncode, out, info, log_file)
    await _until_set_up(spawned.holder, sandbox_id, log_file, timeout)
    return spawned


def _data_pipe(text: str) -> int:
    """The read end of a pipe holding ``text`` and then its end, for bwrap to read whenever
    it comes to it. The text must fit the pipe's buffer, which is never below ``PIPE_BUF``:
    nothing reads it while it is written."""
    data = text.encode()
    if len(data) > select.PIPE_BUF:
        raise ValueError(f"{len(data)} bytes do not fit a pipe's buffer")
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, data)
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    return read_end


async def _until_set_up(
    holder: ProcessRef, sandbox_id: str, log_file: Path, timeout: float
) -> None:
    """Wait until bwrap has finished building the sandbox.

    bwrap reports the child pid right after cloning it, before the child has
    mounted the sandbox's file system; nsenter at that moment lands in a
    half-built root ("failed to execute /usr/bin/setpriv"). The child forks
    the idle command only once everything is in place, so a child of the
    holder that has become ``sleep`` means the sandbox is ready.
    """
    deadline = time.monotonic() + timeout
    pause = 0.0005  # set-up takes a few ms: look often at first, then back off
    while not any(command_name(child) == "sleep" for child in children_of(holder.pid)):
        if not holder.alive() or time.monotonic() > deadline:
            raise ExtensionError(
                f"bubblewrap did not finish setting up the sandbox (holder pid {holder.pid}). "
                f"Last lines of {log_file}:\n{tail(log_file) or '(empty)'}",
                sandbox_id=sandbox_id,
                extension="ext.local",
            )
        await asyncio.sleep(pause)
        pause = min(pause * 1.5, 0.01)


def _identify(
    sandbox_id: str, launcher_rc: int | None, out: bytes, info: bytes, log_file: Path
) -> Holder:
    def failure(what: str) -> ExtensionError:
        return ExtensionError(
            f"bubblewrap did not start the sandbox: {what}. Last lines of {log_file}:\n"
            f"{tail(log_file) or '(empty)'}",
            sandbox_id=sandbox_id,
            extension="ext.local",
        )

    if launcher_rc != 0:
        raise failure(f"launcher exited with code {launcher_rc} (125: cannot join a cgroup)")
    monitor = ProcessRef.of(int(out.strip() or b"0"))
    try:
        child_pid = int(json.loads(info)["child-pid"])
    except (ValueError, KeyError, TypeError):
        if monitor is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(monitor.pid, signal.SIGKILL)
        raise failure("bwrap exited before reporting its child pid") from None
    holder = ProcessRef.of(child_pid)
    if holder is None:
        raise failure(f"the sandbox's init (pid {child_pid}) exited at once")
    return Holder(holder=holder, monitor=monitor)
