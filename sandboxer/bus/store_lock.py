"""An exclusive lock on a JetStream store directory while one nats-server uses it.

nats-server itself does not lock its store directory: a second server on the
same directory starts happily and the two corrupt each other's streams.
The lock is an ``flock`` on a file inside the directory, so it goes away with
the process that holds it, even after ``kill -9``. The server inherits the
locked file (``fd``), so the lock lasts as long as the server does: a parent
killed with -9 while its server still shuts down leaves the store locked
until the server is gone.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from sandboxer.errors import NatsServerError

__all__ = ["LOCK_NAME", "StoreLock"]

LOCK_NAME = ".nats-server.lock"


class StoreLock:
    """``acquire()`` fails at once, with what to do, when another server holds the store."""

    def __init__(self, store_dir: Path) -> None:
        self.store_dir = store_dir
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    @property
    def fd(self) -> int | None:
        """The locked file's descriptor, for the server process to inherit."""
        return self._fd

    def acquire(self) -> None:
        if self._fd is not None:
            return
        self.store_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.store_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise NatsServerError(
                f"the JetStream store {self.store_dir} is in use by another nats-server; stop "
                "that server (or 'sandboxer down') first, or use another SANDBOXER_HOME"
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None
