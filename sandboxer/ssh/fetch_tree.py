"""Copying a directory of a host back to the worker, as a tar archive: what a snapshot reads.

The host's own ``tar`` (or any command that writes a tar archive to stdout,
such as ``docker cp CONTAINER:PATH -``) writes the archive and the bytes land
in a local file as they come, so nothing is staged on the host. The archive
is untrusted (a sandbox wrote the tree): the caller unpacks it with the
checks every workspace archive gets (:mod:`sandboxer.workspaces.extract`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from sandboxer.errors import RemoteCommandFailed, WorkspaceRefused
from sandboxer.ssh.connection import Connection
from sandboxer.ssh.streaming import stream

__all__ = ["fetch_archive", "fetch_tree"]

STDERR_KEEP = 4000
_NO_ENV: Mapping[str, str] = {}


async def fetch_tree(
    conn: Connection,
    remote_dir: str,
    archive: Path,
    *,
    exclude: Sequence[str] = (),
    max_bytes: int,
    timeout: float,
) -> int:
    """Write a tar of ``remote_dir``'s contents to ``archive``; returns its size in bytes.

    ``exclude`` names top-level entries left out (a secrets file). Raises
    :class:`WorkspaceRefused` past ``max_bytes`` (the host's tar is stopped),
    :class:`RemoteCommandFailed` when tar fails.
    """
    argv = ["tar", "-C", remote_dir, *(f"--exclude=./{name}" for name in exclude), "-cf", "-", "."]
    return await fetch_archive(
        conn,
        argv,
        archive,
        what=f"the workspace {remote_dir}",
        command=f"tar of {remote_dir}",
        max_bytes=max_bytes,
        timeout=timeout,
    )


async def fetch_archive(
    conn: Connection,
    argv: Sequence[str],
    archive: Path,
    *,
    what: str,
    command: str,
    env: Mapping[str, str] = _NO_ENV,
    max_bytes: int,
    limit: str | None = None,
    timeout: float,
) -> int:
    """Write what ``argv`` prints on the host (a tar archive) to ``archive``; returns its size.

    ``what`` names the tree and ``command`` the command in errors, ``limit`` what
    ``max_bytes`` is (by default the whole SANDBOXER_UPLOAD_MAX_MB). Raises
    :class:`WorkspaceRefused` past ``max_bytes`` (the host's command is
    stopped), :class:`RemoteCommandFailed` when the command fails.
    """
    limit = limit or f"{max_bytes // (1024 * 1024)} MiB (SANDBOXER_UPLOAD_MAX_MB)"
    errors = bytearray()
    written = 0
    with archive.open("wb") as handle:

        async def sink(name: Literal["stdout", "stderr"], chunk: bytes) -> None:
            nonlocal written
            if name == "stderr":
                errors.extend(chunk)
                del errors[:-STDERR_KEEP]
                return
            written += len(chunk)
            if written > max_bytes:
                raise WorkspaceRefused(f"{what} is larger than {limit}")
            handle.write(chunk)  # a local disk write of one 64 KiB chunk: not worth a thread

        code = await stream(conn, argv, sink, env=env, timeout=timeout)
    if code != 0:
        tail = errors.decode(errors="replace")
        raise RemoteCommandFailed(
            f"{command} exited {code}: {tail[-500:]}",
            exit_status=code,
            output_tail=tail,
        )
    return written
