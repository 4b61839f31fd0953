"""Running a command on a host while its output streams back in chunks.

:func:`sandboxer.ssh.remote.run` collects output for commands sandboxer runs
for itself; this module is for commands whose output a person is watching
(``sandboxer exec``, a VM's setup instructions), so output is handed on as
it arrives. Errors are mapped here like everywhere in this package: a lost
connection is :class:`HostUnreachable`, a deadline the host enforced is
:class:`RemoteCommandFailed`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from sandboxer.errors import HostUnreachable
from sandboxer.ssh import deadline
from sandboxer.ssh.connection import Connection
from sandboxer.ssh.remote import command_line, timed_out_error

if TYPE_CHECKING:
    import asyncssh  # imported where used: see connection.py

__all__ = ["CHUNK", "DRAIN_GRACE", "ChunkSink", "stream"]

ChunkSink = Callable[[Literal["stdout", "stderr"], bytes], Awaitable[None]]
"""Receives each chunk of output with the name of the stream it came from."""

CHUNK = 64 * 1024
DRAIN_GRACE = 1.0
"""Seconds of output still read after a command exited (a background job may hold the channel)."""
POLL = 0.2

_NO_ENV: Mapping[str, str] = {}


async def stream(
    conn: Connection,
    argv: Sequence[str],
    output: ChunkSink,
    *,
    env: Mapping[str, str] = _NO_ENV,
    cwd: str | None = None,
    timeout: float | None = None,
    stdin: AsyncIterable[bytes] | None = None,
    on_close: str | None = None,
) -> int:
    """Run ``argv`` on the host in ``cwd``, hand its output to ``output``, return its exit code.

    ``stdin`` is streamed to the command's standard input, then closed (``/dev/null``
    without it). Either way the host also stops the command, with all it started, if the
    channel closes before its exit (:func:`.deadline.with_deadline`, which runs ``on_close``
    then too, a command line for what left the command's group); a failing ``stdin`` stops
    the command like a failing output.

    The exit code follows the shell: 128 + N for a command killed by signal N.
    With ``timeout`` the host stops the command and all it started after that
    many seconds (:mod:`.deadline`), reported as :class:`RemoteCommandFailed`.
    A failing ``output`` stops the command and its error propagates.
    """
    import asyncssh

    line = command_line(argv, env=env, cwd=cwd)
    # The channel's input stays open until the exit: its end (this worker gone) stops the
    # command on the host, one without a deadline too (an exec). Without input the command
    # reads /dev/null; with input, the input travels in frames whose last one ends it, so
    # the input's end and the channel's stay apart.
    line = deadline.with_deadline(
        line, timeout, watch=True, framed=stdin is not None, on_close=on_close
    )
    began = time.monotonic()
    try:
        process = await conn.create_process(line, encoding=None)
    except (asyncssh.Error, OSError) as exc:
        raise HostUnreachable(
            f"the SSH connection failed while starting {argv[0]!r} ({exc}); check that the "
            "host is up and retry"
        ) from exc

    limit = asyncio.timeout(None if timeout is None else deadline.client_wait(timeout))
    try:
        async with limit:
            code = await _pump_until_exit(process, output, stdin)
    except TimeoutError as exc:
        if timeout is None or not limit.expired():
            raise
        # The host did not report its own kill in time: it is likely unwell.
        raise timed_out_error(conn, argv[0], timeout, confirmed=False) from exc
    except (asyncssh.Error, OSError) as exc:
        raise HostUnreachable(
            f"the SSH connection was lost while running {argv[0]!r} ({exc}); the host stops "
            "the command at its deadline, if it had one"
        ) from exc
    finally:
        process.close()
    if code is None:
        return 255
    status = 128 - code if code < 0 else code
    if timeout is not None and deadline.timed_out(status, time.monotonic() - began, timeout):
        raise timed_out_error(conn, argv[0], timeout, confirmed=True)
    return status


async def _pump_until_exit(
    process: asyncssh.SSHClientProcess[bytes],
    output: ChunkSink,
    stdin: AsyncIterable[bytes] | None = None,
) -> int | None:
    """Hand output to ``output`` until the command exits, then what is left for a moment.
    The host watches the channel's input, which stays open meanwhile: ``stdin`` is written
    to it in frames (:func:`.deadline.frame`), never followed by an end of file."""

    async def pump(reader: asyncssh.SSHReader[bytes], name: Literal["stdout", "stderr"]) -> None:
        while True:
            chunk = await reader.read(CHUNK)
            if not chunk:
                return
            await output(name, chunk)

    pumps = [
        asyncio.ensure_future(pump(process.stdout, "stdout")),
        asyncio.ensure_future(pump(process.stderr, "stderr")),
    ]

    async def feed(source: AsyncIterable[bytes]) -> None:
        try:
            async for chunk in source:
                if chunk:
                    process.stdin.write(deadline.frame(chunk))
                    await process.stdin.drain()  # the channel's window holds the feeding back
            process.stdin.write(deadline.END_OF_INPUT)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the command exited: what it did not read is dropped

    waiter = asyncio.ensure_future(process.wait())
    feeder = asyncio.ensure_future(feed(stdin)) if stdin is not None else None
    try:
        pending: set[asyncio.Future[Any]] = {waiter, *pumps}
        if feeder is not None:
            pending.add(feeder)
        while not waiter.done() and process.returncode is None:
            done, pending = await asyncio.wait(
                pending, timeout=POLL, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                task.result()  # a failing output sink stops the command
        await asyncio.wait(pumps, timeout=DRAIN_GRACE)
        for task in pumps:
            if task.done():
                task.result()
        return process.returncode
    finally:
        tasks = [*pumps, waiter, *([feeder] if feeder is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
