"""Running one command and streaming its output as it is produced.

The output pipes are created here rather than by asyncio (``stdout=PIPE``):
on Python 3.11 ``Process.wait()`` also waits for every pipe to close, so a
command that leaves a background process holding stdout (``server &``) would
hang the caller forever. Here the exit status is awaited on its own, then the
pipes get a short grace period to drain before they are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Sequence
from typing import Any, Literal

from sandboxer.extensions.base import OutputSink
from sandboxer.extensions.local.holder import HOST_ENV, pipe_chunks

__all__ = ["run_streaming"]

DRAIN_GRACE = 1.0
"""Seconds to keep reading output after the command exited (background processes may hold it)."""


async def _pump(fd: int, name: Literal["stdout", "stderr"], output: OutputSink) -> None:
    async for chunk in pipe_chunks(fd):
        await output(name, chunk)


def _exit_code(returncode: int) -> int:
    """Shell convention: a command killed by signal N exits with 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


async def run_streaming(
    argv: Sequence[str],
    output: OutputSink,
    *,
    pass_fds: Sequence[int] = (),
    drain_grace: float = DRAIN_GRACE,
) -> int:
    """Run ``argv`` (in its own session), stream its output, return its exit code.

    If the caller is cancelled, or the output sink raises, the command's whole
    process group is killed before the error propagates.
    """
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out_write,
            stderr=err_write,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
            env=HOST_ENV,
        )
    except BaseException:
        os.close(out_read)
        os.close(err_read)
        raise
    finally:
        os.close(out_write)
        os.close(err_write)
    pumps = [
        asyncio.ensure_future(_pump(out_read, "stdout", output)),
        asyncio.ensure_future(_pump(err_read, "stderr", output)),
    ]
    try:
        waiter = asyncio.ensure_future(proc.wait())
        pending: set[asyncio.Future[Any]] = {waiter, *pumps}
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
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.shield(proc.wait())
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
