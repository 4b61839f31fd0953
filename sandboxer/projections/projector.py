"""The projector: keeps the sandbox view up to date with the log, and rebuilds it on demand.

Live, it follows the events stream from the position stored in the view,
committing after every burst (when no more events are known to follow) or every
``FLUSH_EVERY`` events. It lets a flow of events run on until it pauses
(``LIVE_SETTLE``) before folding it: the workers in the same process make a
command's appends one after another, and folding each as it lands held up the
next (docs/performance.md, "The warm path").

``rebuild`` replays the log from sequence 1 into a fresh database; ``verify``
rebuilds up to the live position and compares the two row by row.

With ``checkpoints`` it also keeps the view's checkpoint (bus/view_checkpoints.py): a copy
of the view stored beside the log every ``checkpoint_after`` events (or every tenth of the
log), which a projector that opens with no view of its own, or one of another shape, starts
from instead of folding the whole log. ``rebuild`` and ``verify`` never read one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

from nats.aio.client import Client
from nats.js import JetStreamContext

from sandboxer.bus.event_reader import last_sequence, read_events
from sandboxer.bus.replay_reader import replay_batches
from sandboxer.bus.view_checkpoints import ViewCheckpoints
from sandboxer.cleanup_waits import cancel_until_done
from sandboxer.config.settings import DEFAULT_VIEW_CHECKPOINT_AFTER
from sandboxer.errors import BusError, ReplayUnsupported, ViewBehind
from sandboxer.fewer_collections import fewer_collections
from sandboxer.projections.folding import Batch
from sandboxer.projections.sandbox_view import FINGERPRINT, SandboxView
from sandboxer.projections.view_checkpointing import ViewCheckpointing

__all__ = ["Projector", "ReplayReport"]

log = logging.getLogger(__name__)

FLUSH_EVERY = 1000
LIVE_SETTLE = 0.002
"""How long the live reader lets a flow of events run on before folding it: longer than the
gaps between the appends of one command's chain (docs/performance.md, "The warm path")."""
OWN_WRITES_WAIT = 2.0
"""Seconds a query waits for the view to fold the asker's own writes (its ``min_seq``) before
it answers from where the view is; the client then asks again (``client.bus.VIEW_PATIENCE``)."""
REBUILD_FLUSH_EVERY = 50_000
MAX_RESTART_DELAY = 5.0
"""Longest wait before a failed reader starts again (a full disk may take minutes to clear)."""


@dataclass(frozen=True)
class ReplayReport:
    events: int
    position: int
    seconds: float
    verified: bool | None = None
    differences: list[str] | None = None

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


class Projector:
    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        db_path: Path,
        *,
        checkpoints: ViewCheckpoints | None = None,
        checkpoint_after: int = DEFAULT_VIEW_CHECKPOINT_AFTER,
    ) -> None:
        self._nc = nc
        self._js = js
        self._db_path = db_path
        self.view: SandboxView | None = None
        self._lock = asyncio.Lock()
        self._advanced = asyncio.Condition()
        self._restart = asyncio.Event()
        self.position = 0
        self._kept = (
            None
            if checkpoints is None
            else ViewCheckpointing(checkpoints, db_path, checkpoint_after)
        )
        self.log_end_at_open = 0
        """The log's last event when the view opened: no query is answered from the view
        until it has folded that far (:meth:`caught_up`), so a projector that opened behind
        the log (built from it, read from the checkpoint, or back after a while stopped)
        does not answer from a view the log has left behind."""
        self.building_at: int | None = None
        """While the view is being rebuilt from the log: the event the new one has folded."""
        self._build_first = False
        """An empty view opened while the log holds events: :meth:`run` rebuilds it in bulk
        before it follows the log (2 to 3.5 times as fast as following from sequence 1)."""

    async def open(self) -> None:
        """Open the view. One that has folded nothing, or was written by another shape of
        the code, starts from the view's checkpoint when there is one to trust, and is
        otherwise rebuilt from the log (in bulk: faster than following it from sequence 1)."""
        self.view = await SandboxView.open(self._db_path)
        self.position = await self.view.position()
        self.log_end_at_open = await self._log_end()
        current = await self.view.is_current()
        if current and self.position > 0:
            if self._kept is not None:
                await self._kept.note_stored(self.position)
            return
        if not current:
            log.warning(
                "the sandbox view at %s was written by another version of sandboxer "
                "(fingerprint %s, now %s); rebuilding it from the log, or from the view's "
                "checkpoint when there is one to trust",
                self._db_path,
                await self.view.fingerprint(),
                FINGERPRINT,
            )
        if await self._from_checkpoint():
            return
        if current:
            # Empty, and none to start from: built in bulk once it runs (the start does not
            # wait for it) when the log holds anything, else followed from the start.
            self._build_first = self.log_end_at_open > 0
            return
        await self._build_whole()

    async def _log_end(self) -> int:
        """The log's last sequence; 0 (nothing to wait for) when the stream does not say."""
        try:
            return await last_sequence(self._js)
        except BusError as exc:
            log.warning("the log's end is unknown (%s): queries will not wait for it", exc)
            return 0

    async def _build_whole(self) -> None:
        """Rebuild the view from the log, and store its checkpoint soon after, for the next
        projector without a view (the first process upgraded rebuilds; the others start
        from its checkpoint)."""
        report = await self.rebuild()
        log.warning(
            "the sandbox view was built from the log: %d events in %.2f s",
            report.events,
            report.seconds,
        )
        if self._kept is not None:
            self._kept.folded(self.position)

    async def close(self) -> None:
        if self._kept is not None:
            await self._kept.settled()
        if self.view is not None:
            await self.view.close()
            self.view = None

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the log until ``stop``; restarts its reader after a rebuild swapped the view."""
        if self.view is None:
            await self.open()
        if self._build_first:
            self._build_first = False
            await self._first_build(stop)
        failures = 0
        while not stop.is_set():
            self._restart.clear()
            follow = asyncio.create_task(self._follow())
            stopped = asyncio.create_task(stop.wait())
            restarted = asyncio.create_task(self._restart.wait())
            done, _ = await asyncio.wait(
                {follow, stopped, restarted}, return_when=asyncio.FIRST_COMPLETED
            )
            # Collected, not awaited: awaiting a reader that failed would raise its error here
            # and end the role (a full disk did, in the disk-full chaos scenario).
            await cancel_until_done(follow, stopped, restarted)
            failure = follow.exception() if follow in done else None
            if failure is None:
                failures = 0
                continue
            failures += 1
            delay = min(0.5 * 2 ** (failures - 1), MAX_RESTART_DELAY)
            # The view holds what it committed and its position: the reader resumes after it.
            log.error("projector reader failed: %r; restarting in %.1f s", failure, delay)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()

    async def _first_build(self, stop: asyncio.Event) -> None:
        """:meth:`_build_whole`, until ``stop``; a query meanwhile waits for it, then is
        answered ``view_behind`` (:meth:`caught_up`). A build that fails is logged, and the
        view follows the log from where it is instead."""
        building = asyncio.create_task(self._build_whole())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({building, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        building.cancel()  # nothing once it is done; else once: the build cleans up after it
        (outcome,) = await asyncio.gather(building, return_exceptions=True)
        if isinstance(outcome, Exception):
            log.warning("the sandbox view was not built in bulk (%r); following the log", outcome)

    async def _follow(self) -> None:
        assert self.view is not None
        batch = Batch(self.view)
        async for seq, _subject, data, pending in read_events(
            self._js, start_seq=self.position + 1, follow=True, settle=LIVE_SETTLE
        ):
            async with self._lock:
                if seq <= self.position:
                    continue
                await batch.apply(seq, data)
                if pending == 0 or batch.size >= FLUSH_EVERY:
                    await batch.flush()
                    await self._advance(batch.position)
                    if self._kept is not None:
                        self._kept.folded(self.position)

    async def _advance(self, position: int) -> None:
        async with self._advanced:
            self.position = position
            self._advanced.notify_all()

    async def wait_for(self, seq: int, timeout: float | None = None) -> bool:
        """Wait until the view includes event ``seq`` (read-your-writes for queries)."""
        async with self._advanced:
            try:
                async with asyncio.timeout(OWN_WRITES_WAIT if timeout is None else timeout):
                    await self._advanced.wait_for(lambda: self.position >= seq)
            except TimeoutError:
                return False
        return True

    async def caught_up(self, min_seq: int = 0) -> int:
        """The position a query's answer reports, once the view has folded ``min_seq`` (the
        asker's own writes) and the log as it was when the view opened. Waits a while for
        them; raises :class:`ViewBehind` while the view is short of the latter still, and
        answers from where it is when only the asker's writes are late (their reply says
        its position)."""
        wanted = max(min_seq, self.log_end_at_open)
        if wanted > self.position:
            await self.wait_for(wanted)
        if self.position >= self.log_end_at_open:
            return self.position
        at, how = self.position, ""
        if self.building_at is not None:
            at, how = self.building_at, ", being built from the log"
        raise ViewBehind(
            f"this projector's view is still catching up with the log (at event {at} of "
            f"{self.log_end_at_open}, where the log was when it started{how}); ask again in a "
            "moment"
        )

    async def _from_checkpoint(self) -> bool:
        """Put the view's checkpoint in place of this view, when there is one to trust;
        whether it was."""
        if self._kept is None:
            return False
        fresh = self._db_path.with_suffix(".checkpoint-in")
        try:
            if await self._kept.fetch(fresh) is None:
                return False
            assert self.view is not None
            await self.view.close()
            await asyncio.to_thread(_swap, fresh, self._db_path)
            self.view = await SandboxView.open(self._db_path)
            self.position = await self.view.position()
        finally:
            await asyncio.to_thread(fresh.unlink, missing_ok=True)
        log.info("the sandbox view was read from its checkpoint at event %d", self.position)
        return True

    async def _build(self, path: Path, stop_seq: int | None, *, live: bool = False) -> ReplayReport:
        """Fold the log into a new view at ``path``; ``live``: the one to swap in for this
        projector's, whose progress :attr:`building_at` tells."""
        await asyncio.to_thread(path.unlink, missing_ok=True)
        view = await SandboxView.open(path, scratch=True)
        started = time.perf_counter()
        count = 0
        batch = Batch(view, fresh=True)
        try:
            with fewer_collections():
                async for events in self._whole_log(stop_seq):
                    await batch.apply_many(events)
                    count += len(events)
                    if live:
                        self.building_at = batch.position
                    if batch.size >= REBUILD_FLUSH_EVERY:
                        await batch.flush(behind=True)  # written while the next ones fold
                await batch.flush()
            position = await view.position()
        finally:
            if live:
                self.building_at = None
            with contextlib.suppress(Exception):  # the build failed: its error is the one to see
                await batch.settle()
            await view.close()
        return ReplayReport(count, position, time.perf_counter() - started)

    async def _whole_log(self, stop_seq: int | None) -> AsyncIterator[list[tuple[int, bytes]]]:
        """The log from sequence 1 in chunks: the raw bulk reader when it can, nats-py
        otherwise."""
        end = await last_sequence(self._js) if stop_seq is None else stop_seq
        last = 0
        try:
            async for events in replay_batches(self._nc, self._js, start_seq=1, stop_seq=end):
                last = events[-1][0] if events else last
                yield events
            return
        except ReplayUnsupported as why:
            log.info("replaying through nats-py: %s", why)
        except BusError as why:
            # Cut off mid-read (its consumer lost, the connection dropped, delivery stalled):
            # what was read stands, and nats-py's ordered consumer reads the rest.
            log.warning("the bulk replay stopped after event %d (%s); reading on", last, why)
        chunk: list[tuple[int, bytes]] = []
        async for seq, _subject, data, pending in read_events(
            self._js, start_seq=last + 1, stop_seq=end
        ):
            chunk.append((seq, data))
            if pending == 0 or len(chunk) >= FLUSH_EVERY:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    async def rebuild(self) -> ReplayReport:
        """Replay the whole log into a new database and swap it in for the live one."""
        assert self.view is not None
        async with self._lock:
            fresh = self._db_path.with_suffix(".rebuild")
            report = await self._build(fresh, stop_seq=None, live=True)
            await self.view.close()
            await asyncio.to_thread(_swap, fresh, self._db_path)
            self.view = await SandboxView.open(self._db_path)
            await self._advance(await self.view.position())
            self._restart.set()
        return report

    async def verify(self) -> ReplayReport:
        """Rebuild up to the live position in a scratch database and compare every row."""
        assert self.view is not None
        async with self._lock:
            live_position = self.position
            scratch = self._db_path.with_suffix(".verify")
            report = await self._build(scratch, stop_seq=live_position)
            rebuilt = await SandboxView.open(scratch)
            try:
                differences = _compare(await self.view.dump(), await rebuilt.dump())
            finally:
                await rebuilt.close()
                scratch.unlink(missing_ok=True)
        return ReplayReport(
            report.events, report.position, report.seconds, not differences, differences
        )


def _swap(fresh: Path, live: Path) -> None:
    """Put the rebuilt database in place of the live one (whose journal files are stale)."""
    # The rebuild wrote without syncs (a scratch file): it is made durable once, here,
    # before it becomes the view a crash would leave behind.
    fd = os.open(fresh, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fresh.replace(live)
    for suffix in ("-wal", "-shm"):
        Path(str(live) + suffix).unlink(missing_ok=True)


def _compare(
    live: dict[str, list[tuple[object, ...]]], rebuilt: dict[str, list[tuple[object, ...]]]
) -> list[str]:
    """Each row one side holds and the other does not, paired by its first column for the
    report. Whole rows are compared: a table keyed by more than its first column (a command
    id's rejections, one per project) holds several rows under one first column."""
    differences: list[str] = []
    for table, rows in live.items():
        live_only = Counter(rows) - Counter(rebuilt[table])
        rebuilt_only = Counter(rebuilt[table]) - Counter(rows)
        lives = _by_first(live_only.elements())
        rebuilts = _by_first(rebuilt_only.elements())
        for key in sorted(set(lives) | set(rebuilts), key=str):
            differences.append(
                f"{table}[{key}]: live {lives.get(key)!r:.200} "
                f"!= rebuilt {rebuilts.get(key)!r:.200}"
            )
    return differences[:50]


def _by_first(
    rows: Iterable[tuple[object, ...]],
) -> dict[object, tuple[object, ...] | list[tuple[object, ...]]]:
    """Rows by their first column: the row alone, or a list when several share it."""
    grouped: dict[object, list[tuple[object, ...]]] = {}
    for row in rows:
        grouped.setdefault(row[0], []).append(row)
    return {key: found[0] if len(found) == 1 else found for key, found in grouped.items()}
