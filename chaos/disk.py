"""A small filesystem for the disk-full scenario: a size-limited tmpfs mounted for the length of
a block (we are root), filled to the last byte on demand and freed again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

from chaos.harness import HarnessError

__all__ = ["FILLER", "fill", "free", "free_bytes", "small_filesystem"]

FILLER = "filler"
"""The file that takes the free space (in the filesystem's root)."""


@contextlib.asynccontextmanager
async def small_filesystem(mount_point: Path, size_mb: int) -> AsyncIterator[Path]:
    """A tmpfs of ``size_mb`` MiB at ``mount_point``, unmounted on the way out whatever happened
    (lazily: a process still holding a file there does not keep it mounted)."""
    await asyncio.to_thread(mount_point.mkdir, parents=True, exist_ok=True)
    mounted = await asyncio.to_thread(
        subprocess.run,
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        raise HarnessError(
            f"cannot mount a {size_mb} MiB tmpfs at {mount_point} (root is needed): "
            f"{mounted.stderr.strip()}"
        )
    try:
        yield mount_point
    finally:
        await asyncio.shield(
            asyncio.to_thread(
                subprocess.run, ["umount", "-l", str(mount_point)], capture_output=True, check=False
            )
        )


def _fill(root: Path) -> int:
    written = 0
    chunk = b"\0" * (1 << 20)
    fd = os.open(root / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 1 << 12, 1):  # down to the last byte
            try:
                while True:
                    written += os.write(fd, chunk[:size])
            except OSError:
                continue  # full at this size: go on with smaller writes
    finally:
        os.close(fd)
    return written


async def fill(root: Path) -> int:
    """Take every free byte of the filesystem at ``root``; returns how many were taken."""
    return await asyncio.to_thread(_fill, root)


def free(root: Path) -> None:
    """Give the filler's space back."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(root / FILLER)


def free_bytes(root: Path) -> int:
    return shutil.disk_usage(root).free
