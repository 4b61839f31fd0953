"""Account checkpoints: each long account's book, which a fresh load starts from instead of
sequence 1.

What a checkpoint is, and when it may be trusted: :mod:`sandboxer.bus.account_checkpoint`.
Where they are kept: the checkpoints bucket (:mod:`sandboxer.bus.checkpoint_bucket`), one
object per project. A book carries the id of every command its account ever decided,
megabytes for a long history, more than a message may hold; the bucket cuts it into chunks.

A checkpoint only saves time. Any failure to read or check one is a load from sequence 1
(logged when it is not simply absent). One is written in the background by a process that
has folded many of the account's events since its last (:meth:`AccountCheckpoints.folded`):
a write that fails, or that another process's write replaces, loses nothing.
"""

from __future__ import annotations

import asyncio
import logging

import immutables
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.object_store import ObjectStore

from sandboxer.bus.account_checkpoint import (
    decode_checkpoint,
    encode_checkpoint,
    fingerprint,
)
from sandboxer.bus.checkpoint_bucket import (
    STRAY_GRACE,
    event_digest,
    list_checkpoints,
    open_checkpoint_bucket,
    read_checkpoint,
    stored_info,
)
from sandboxer.bus.event_store import LoadedAccount
from sandboxer.config.settings import DEFAULT_CHECKPOINT_AFTER
from sandboxer.fewer_collections import fewer_collections

__all__ = ["AccountCheckpoints", "handled_map"]

log = logging.getLogger(__name__)

MAX_BYTES = 512 << 20
"""A checkpoint larger than this is not read (about 15 million command ids)."""
MAP_CHUNK = 50_000
"""Command ids put back into a book's map before the rest of the process may run: a million
take about a second (as a long fold does, ``FOLD_CHUNK``)."""


class AccountCheckpoints:
    """Reads and writes account checkpoints (see the module)."""

    def __init__(
        self, js: JetStreamContext, bucket: ObjectStore, *, after: int = DEFAULT_CHECKPOINT_AFTER
    ) -> None:
        self._js = js
        self._bucket = bucket
        self._after = after
        fingerprint()  # the fold's source read once here, at start, not on a create's path
        self._writing: dict[str, asyncio.Task[None]] = {}
        self._since: dict[str, int] = {}
        """Events folded by this process, per account, since it last wrote its checkpoint
        (an event read again after the store let the account go counts twice: a checkpoint
        then comes a little early, never late)."""

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        replicas: int,
        *,
        after: int = DEFAULT_CHECKPOINT_AFTER,
        stray_grace: float = STRAY_GRACE,
    ) -> AccountCheckpoints:
        """The bucket (:func:`~sandboxer.bus.checkpoint_bucket.open_checkpoint_bucket`)."""
        bucket = await open_checkpoint_bucket(js, replicas, stray_grace=stray_grace)
        return cls(js, bucket, after=after)

    async def read(self, project: str) -> LoadedAccount | None:
        """The checkpoint of ``project``'s account, when there is one this code may trust
        and the log still holds its last event; None otherwise."""
        if not fingerprint():
            return None
        try:
            data = await self._object(project)
            if data is None:
                return None
            checkpoint = decode_checkpoint(data, project)
            if checkpoint is None:
                log.info("the checkpoint of account %s is unreadable or of other code", project)
                return None
            last = await event_digest(self._js, checkpoint.last_seq)
        except (NatsError, OSError, TimeoutError, ValueError) as exc:
            log.warning("the checkpoint of account %s could not be read (%r)", project, exc)
            return None
        if last != checkpoint.last_message:
            log.warning(
                "the checkpoint of account %s is of another log (its event %d is not there); "
                "not read",
                project,
                checkpoint.last_seq,
            )
            return None
        # Said once per fresh load of a long account (rare: a process keeps its accounts).
        log.info("account %s: read from its checkpoint at event %d", project, checkpoint.last_seq)
        return checkpoint.loaded(await handled_map(checkpoint.handled))

    def folded(self, loaded: LoadedAccount, events: int) -> None:
        """A load or an append of this process folded ``events`` more events into
        ``loaded``. Once ``after`` of them (``SANDBOXER_CHECKPOINT_AFTER``), and a tenth of
        the account's history, were folded since the last checkpoint written here, one of
        ``loaded`` is written in the background (one per account at once). So a long-running service
        keeps its accounts' checkpoints near their ends, not only after a restart's first
        long load, and a long account's is rewritten only as its history grows by a tenth."""
        project = loaded.state.project
        since = self._since.get(project, 0) + events
        self._since[project] = since
        enough = max(self._after, len(loaded.book.handled) // 10)
        if since < enough or not fingerprint() or project in self._writing:
            return
        self._since[project] = 0
        task = asyncio.create_task(self._write(loaded), name=f"checkpoint-{project}")
        self._writing[project] = task
        task.add_done_callback(lambda _: self._writing.pop(project, None))

    async def projects(self) -> list[str]:
        """The projects whose accounts have a checkpoint (the fault suite holds each one to
        the log: chaos/checks.py)."""
        stored = await list_checkpoints(self._js)
        return sorted(s.name.removeprefix(_PREFIX) for s in stored if s.name.startswith(_PREFIX))

    async def settled(self) -> None:
        """Wait for the checkpoints being written."""
        await asyncio.gather(*self._writing.values(), return_exceptions=True)

    async def _write(self, loaded: LoadedAccount) -> None:
        project = loaded.state.project
        try:
            last = await event_digest(self._js, loaded.last_seq)
            if last is None:
                return  # not in the log a load just read: nothing to vouch for
            await self._bucket.put(_name(project), encode_checkpoint(loaded, last))
            log.info("account %s: checkpoint written at event %d", project, loaded.last_seq)
        except (NatsError, OSError, TimeoutError) as exc:
            log.warning("the checkpoint of account %s was not written (%r)", project, exc)

    async def _object(self, project: str) -> bytes | None:
        """The bytes of the project's checkpoint; None when there is none, or it is too
        large or not whole."""
        info = await stored_info(self._js, _name(project))
        if info is None or not info.size or info.size > MAX_BYTES:
            return None
        parts: list[bytes] = []
        if not await read_checkpoint(self._js, info, parts.append):
            return None
        return b"".join(parts)


async def handled_map(command_ids: list[str]) -> immutables.Map[str, None]:
    """A book's decided ids as its map, :data:`MAP_CHUNK` at a time, letting the rest of the
    process run in between."""
    handled = immutables.Map[str, None]().mutate()
    with fewer_collections():
        for n, command_id in enumerate(command_ids, 1):
            handled[command_id] = None
            if n % MAP_CHUNK == 0:
                await asyncio.sleep(0)
    return handled.finish()


_PREFIX = "account."
"""A checkpoint's object name is the project's under this prefix."""


def _name(project: str) -> str:
    return f"{_PREFIX}{project}"
