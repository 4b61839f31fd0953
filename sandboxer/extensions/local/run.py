"""Running one command and streaming its output as it is produced.

The command is started by :mod:`.spawn` (not by asyncio: see there why), and its
output pipes are read here. Its exit status is awaited on its own, not with the
pipes' end (as asyncio's ``Process.wait()`` does on Python 3.11), since a command
that leaves a background process holding stdout (``server &``) would hang the
caller forever: once it exits, the pipes get a short grace period to drain before
they are closed.

Standard input is a pipe of ours too when the caller streams some: a feeder
writes each chunk (in a thread, so a command that reads slowly holds back the
feeder, not the event loop) and closes the pipe at the end of the input. A
command that exits without reading all of it ends the feeding (a broken pipe
is no error); a failing input stops the command like a failing output does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from typing import Any, Literal

from sandboxer.extensions.base import OutputSink, Stdin
from sandboxer.extensions.local.holder import HOST_ENV, pipe_chunks
from sandboxer.extensions.local.spawn import Started, spawn

__all__ = ["run_streaming"]

DRAIN_GRACE = 1.0
"""Seconds to keep reading output after the command exited (background processes may hold it)."""


async def _pump(fd: int, name: Literal["stdout", "stderr"], output: OutputSink) -> None:
    async for chunk in pipe_chunks(fd):
        await output(name, chunk)


def _exit_code(returncode: int) -> int:
    """Shell convention: a command killed by signal N exits with 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


async def _feed(fd: int, stdin: Stdin) -> None:
    """Write ``stdin`` to the pipe ``fd`` and close it; the command's early exit ends it."""
    loop = asyncio.get_running_loop()
    pipe = os.fdopen(fd, "wb", buffering=0)
    try:
        transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, pipe)
    except BaseException:
        pipe.close()
        raise
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    try:
        async for chunk in stdin:
            if chunk:
                writer.write(chunk)
                await writer.drain()  # a command that reads slowly holds the feeding back
    except (BrokenPipeError, ConnectionResetError):
        pass  # the command closed its input (or exited): what it did not read is dropped
    finally:
        transport.close()


async def _stop(proc: Started, tasks: list[asyncio.Future[None]]) -> None:
    """Kill the command's process group if it still runs, then end its pumps and feeder."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.shield(proc.wait())
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def run_streaming(
    argv: Sequence[str],
    output: OutputSink,
    *,
    pass_fds: Sequence[int] = (),
    drain_grace: float = DRAIN_GRACE,
    stdin: Stdin | None = None,
    own_session_keyring: bool = False,
) -> int:
    """Run ``argv`` (in its own session), stream its output, return its exit code.

    ``stdin`` is fed to the command's standard input (an empty input without it).
    If the caller is cancelled, or the output sink or the input raises, the
    command's whole process group is killed before the error propagates.

    ``own_session_keyring``: the command holds a session keyring that nothing else holds
    (:mod:`.keyrings`, :mod:`.spawn`).
    """
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    in_read, in_write = os.pipe() if stdin is not None else (-1, -1)
    try:
        proc = await spawn(
            argv,
            stdin=in_read if stdin is not None else subprocess.DEVNULL,
            stdout=out_write,
            stderr=err_write,
            pass_fds=pass_fds,
            env=HOST_ENV,
            own_session_keyring=own_session_keyring,
        )
    except BaseException:
        os.close(out_read)
        os.close(err_read)
        if in_write >= 0:
            os.close(in_write)
        raise
    finally:
        os.close(out_write)
        os.close(err_write)
        if in_read >= 0:
            os.close(in_read)
    pumps = [
        asyncio.ensure_future(_pump(out_read, "stdout", output)),
        asyncio.ensure_future(_pump(err_read, "stderr", output)),
    ]
    feeder = asyncio.ensure_future(_feed(in_write, stdin)) if stdin is not None else None
    try:
        waiter = asyncio.ensure_future(proc.wait())
        pending: set[asyncio.Future[Any]] = {waiter, *pumps}
        if feeder is not None:
            pending.add(feeder)
        while not waiter.done():
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a failing output sink stops the command
        returncode = waiter.result()
        await asyncio.wait(pumps, timeout=drain_grace)
        for pump in pumps:
            if pump.done():
                pump.result()
        return _exit_code(returncode)
    finally:
        await _stop(proc, [*pumps, *([feeder] if feeder is not None else [])])
