"""The projector's side of the view's checkpoint (bus/view_checkpoints.py): when to store a
copy of the view, storing it in the background, and fetching one to start a view from.

Nothing here is ever needed: a checkpoint not stored is stored later, and one that cannot
be read, or trusted, is a rebuild of the view from the log. So failures are only logged.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

from nats.errors import Error as NatsError

from sandboxer.bus.view_checkpoints import ViewCheckpoints
from sandboxer.projections.sandbox_view import FINGERPRINT
from sandboxer.projections.view_copy import copy_view, view_identity

__all__ = ["ViewCheckpointing"]

log = logging.getLogger(__name__)

FAILURES = (NatsError, OSError, TimeoutError, sqlite3.Error)
"""What a read or write of a checkpoint may meet: the bus, the disk, the file."""


class ViewCheckpointing:
    """Checkpoints of the view at ``db_path``: one stored every ``after`` events folded (and
    a tenth of the log), one write at a time."""

    def __init__(self, checkpoints: ViewCheckpoints, db_path: Path, after: int) -> None:
        self._checkpoints = checkpoints
        self._db_path = db_path
        self._after = after
        self._checkpointed = 0
        """The position of the last checkpoint written, read or found here."""
        self._writing: asyncio.Task[None] | None = None

    async def fetch(self, destination: Path) -> int | None:
        """Write the checkpoint of this shape of view to ``destination`` when there is one
        to trust (whole, of this log, the view it says it is); the position it reached, or
        None (``destination`` is then left to the caller to remove)."""
        try:
            stored = await self._checkpoints.stored(FINGERPRINT)
            if stored is None:
                return None
            if not await self._checkpoints.fetch(stored, destination):
                log.warning(
                    "the sandbox view's checkpoint at event %d is incomplete or not of this "
                    "log; not read",
                    stored.position,
                )
                return None
            identity = await asyncio.to_thread(view_identity, destination)
            if identity != (FINGERPRINT, stored.position):
                log.warning("the sandbox view's checkpoint is not the view it says; not read")
                return None
        except FAILURES as exc:
            log.warning("the sandbox view's checkpoint could not be read (%r)", exc)
            return None
        self._checkpointed = stored.position
        return stored.position

    async def note_stored(self, position: int) -> None:
        """A view that reached ``position`` is open: count the interval to the next write
        from the stored checkpoint (a restart does not store another at once)."""
        try:
            stored = await self._checkpoints.stored(FINGERPRINT)
        except FAILURES as exc:
            log.info("the sandbox view's checkpoint was not looked at (%r)", exc)
            return
        if stored is not None:
            self._checkpointed = min(stored.position, position)

    def folded(self, position: int) -> None:
        """The view has committed up to ``position``: past the interval since the last
        checkpoint, a copy of it is stored in the background."""
        if self._writing is not None:
            return
        if position - self._checkpointed < max(self._after, position // 10):
            return
        self._checkpointed = position
        self._writing = asyncio.create_task(self._write(position), name="view-checkpoint")

        def written(_: asyncio.Task[None]) -> None:
            self._writing = None

        self._writing.add_done_callback(written)

    async def settled(self) -> None:
        """Wait for a write under way: finished, not cut off between its chunks."""
        if self._writing is not None:
            await asyncio.gather(self._writing, return_exceptions=True)

    async def _write(self, position: int) -> None:
        copy = self._db_path.with_suffix(".checkpoint-out")
        try:
            # Another projector may have stored one as recent: one write per interval.
            stored = await self._checkpoints.stored(FINGERPRINT)
            if stored is not None and position - stored.position < self._after:
                self._checkpointed = max(self._checkpointed, stored.position)
                return
            fingerprint, copied = await asyncio.to_thread(copy_view, self._db_path, copy)
            if fingerprint != FINGERPRINT or not copied:
                return
            if await self._checkpoints.write(copy, FINGERPRINT, copied):
                log.info("the sandbox view's checkpoint was stored at event %d", copied)
        except FAILURES as exc:
            log.warning("the sandbox view's checkpoint was not stored (%r)", exc)
        finally:
            await asyncio.to_thread(copy.unlink, missing_ok=True)
