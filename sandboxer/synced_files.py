"""Replacing a small file so that a crash or a power cut leaves the old one or the new one.

The new content goes to a scratch file beside the target (a name no one else uses, created
exclusively and never through a link), is synced, and renamed over the target; the directory
is synced too, so the rename itself is on disk when this returns. Files that several
processes trust after a restart (credentials, a remake's floor, a provider record) are
written this way. A scratch file left by a crash between create and rename is harmless: it
is never read, and its name is random.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["replace_synced"]


def replace_synced(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Make ``path`` hold ``data`` (file mode ``mode``), atomically and durably; OSError as
    the system gives it. The scratch file is removed on any failure."""
    scratch = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(scratch, path)
    except BaseException:
        scratch.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)
