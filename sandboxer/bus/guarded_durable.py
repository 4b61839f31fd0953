"""A service durable on the events stream, kept as the service defined it.

**The hole.** Clients may create consumers on the events stream through the bare
``$JS.API.CONSUMER.CREATE.SANDBOXER_EVENTS`` subject (nats-py's ordered consumers
use it). Such a request may carry ``name: "meter"``, and nats-server then updates
the service's durable in place: a narrowed filter makes it skip, for good, what the
filter leaves out while the service keeps fetching from it (its position moves on).
Permissions see subjects, not payloads, so they cannot refuse it
(docs/security.md#durables-clients-could-redefine).

**What gives it away.** That request cannot carry ``durable_name`` (the server
refuses a durable name there), and an update replaces the whole definition, so a
durable a client has written has lost its ``durable_name``, and no client can put it
back: only the named subjects, which clients are denied, set it. A durable that
still has it has been written by the service alone since the service made it,
however often a client changed and restored its other settings meanwhile.

**What is done.** The owner looks at its durable at start and then every
``check_every`` seconds, in a task beside the loop that fetches from it
(:meth:`GuardedDurable.watching`), so a bus slow to answer a look holds no fetch back:

- intact: its ack floor is remembered. Every event up to it that the service's
  filter takes was delivered under the service's definition and acknowledged.
- redefined, or gone: it is deleted and made again from the remembered floor + 1,
  so nothing a redefinition skipped is lost. What comes again had been handled, so
  the handler must be idempotent (the meter: ``meter-<sandbox>`` is handled once by
  the account; the State Hub: the same event id, which the hub deduplicates). A
  process that starts to find it redefined remembers no floor (unless a remake was cut
  short, below): it is made from the start of the log.

**A remake cut short.** Between its delete and its create the durable is gone, and the
floor only in memory; a process killed there (or stopped after a create that failed)
would leave the next start to make it from the start of the log. So a remake writes the
floor to disk first and removes it once the durable is made (bus/remake_marker.py, which
also says why nothing a client writes can move it on); a start that finds the durable
missing or redefined makes it from a floor found there. That file is the service's
alone, on the machine's home: a start on another machine, or with another home, still
reads from the start of the log (nothing lost, only time).

**Processes sharing a home.** Their remakes share the file, and may race: both find the
durable missing, and the create that comes second is refused, the durable made by the
first. The floor the loser kept is then on disk beside a made durable, where nothing else
removes it, and read the day the durable is missing again (an operator deleting it for the
log to be read again from its start would get it from that floor). So a process does not
take a marker as dealt with once for good: after any remake of its own, made or refused,
and whenever a look finds the durable missing or redefined (another process's remake, cut
short, may have kept a floor), its next look deals with the marker again. Finding the
durable missing or redefined, it makes it from the higher of its own floor and the one
kept (both were handled). Finding it intact, it removes a marker whose floor is at or
below the ack floor it just read (the durable keeps that floor itself), and leaves one
above it, to look again next time: that may be another process's remake between its write
and its delete (removed, the floor would be nowhere on disk once that process is killed
after the delete), or a floor kept before a durable made from a lower one has handled its
way past it. The remake that wrote it removes it, or a later look once the durable's ack
floor has passed it (until then the day the durable is deleted it is made from there:
nothing is lost, the operator's read from the start waits for that).

A remake that deletes an intact durable (new settings) keeps a floor no higher than its
ack floor, which a look of another process's may remove before the delete: so a remake
keeps its floor again after its delete. What is left is a look that read the durable
before the delete and removes the marker after that second write; the floor is then in
that process's memory, which makes the durable from it at its next look, and is lost only
if both processes stop before that (the durable is then made from the start of the log).

The service never updates it in place. A changed setting (a new ``ack_wait``) makes
it again from the ack floor of the same look that found it intact, and it is made
only with ``action: create``, which fails rather than take over a consumer of that
name that a client made meanwhile: an update would put ``durable_name`` back, and
hide a redefinition another of the service's processes had not noticed yet.

**A remake between the loop's fetch and its ack.** The looks take no turn with the
loop, so a remake may come while a fetch waits or a message is in hand. Nothing is lost
for it, and nothing handled again but what a remake always gives again:

- it starts after an ack floor read while the durable was intact, so every message the
  loop had not acknowledged by then (in hand, or in a fetch the delete cut short) is
  above it, and is delivered again by the durable made again;
- a fetch waiting when the durable is deleted ends as an idle one (the server's 409);
  one sent before it is made again fails with "no responders" (503). The loops take
  both as the transient fetch failures they are and fetch again, from the new durable
  (a pull subscription names the durable, not one incarnation of it);
- the ack (nak, term) of a message the old durable delivered reaches the new one of
  that name. If the new one has delivered that stream sequence too, it takes it for
  that delivery (an ack: the message was handled; a nak: it comes again; a term: its
  failure is on record); otherwise it ignores it, without moving where it starts, so the
  message still comes again (tests/integration/test_redefined_durables.py holds the
  server to it). That is all a remake by another of the service's processes can do
  too, and no lock in this one could keep that from the loop.

One look runs at a time in a process: the pull loop's own :meth:`~GuardedDurable.ensure`
(after fetches failed in a row) waits for the task's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from nats.aio.client import Client
from nats.js.api import ConsumerConfig, ConsumerInfo, DeliverPolicy
from nats.js.errors import NotFoundError

from sandboxer.bus.consumer_api import API_PREFIX, bus_errors, create_consumer
from sandboxer.bus.remake_marker import RemakeMarker, marker_file
from sandboxer.errors import BusError, StreamUnavailable

__all__ = ["CHECK_EVERY", "GuardedDurable", "made_from", "redefined", "same_settings"]

log = logging.getLogger(__name__)

CHECK_EVERY = 5.0
"""Seconds between looks at a guarded durable: how long a redefinition can hold its
events back (they are metered or delivered late, never lost)."""

ROUNDS = 5
"""Looks at start before giving up on a durable that keeps changing under the service."""


def redefined(current: ConsumerConfig, durable: str) -> bool:
    """Whether someone other than the service has written the durable (see the docstring)."""
    return current.durable_name != durable


def _filters(config: ConsumerConfig) -> Sequence[str]:
    return sorted(config.filter_subjects or ([config.filter_subject or ""]))


def same_settings(current: ConsumerConfig, wanted: ConsumerConfig) -> bool:
    """Whether an intact durable has the settings the service now wants (where it starts
    is not a setting: it is made again from its floor)."""
    return (
        _filters(current) == _filters(wanted)
        and current.ack_policy == wanted.ack_policy
        and current.ack_wait == wanted.ack_wait
        and current.max_deliver == wanted.max_deliver
        and current.max_ack_pending == wanted.max_ack_pending
    )


def made_from(wanted: ConsumerConfig, floor: int | None) -> ConsumerConfig:
    """``wanted``, starting after ``floor`` (from the start of the log when none is known)."""
    if not floor:
        return wanted.evolve(deliver_policy=DeliverPolicy.ALL, opt_start_seq=None)
    return wanted.evolve(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=floor + 1)


class GuardedDurable:
    """One service durable on the events stream: made, looked at, and made again."""

    def __init__(
        self,
        nc: Client,
        stream: str,
        wanted: ConsumerConfig,
        *,
        home: Path,
        check_every: float = CHECK_EVERY,
    ) -> None:
        """``home``: the service's, where a remake keeps its floor until it is made."""
        assert wanted.durable_name, "a guarded consumer is a durable"
        assert wanted.name == wanted.durable_name
        self._nc = nc
        # Its own context on the prefix its creates are sent to, so looks and creates
        # always name the same API.
        self._js = nc.jetstream(prefix=API_PREFIX)
        self._stream = stream
        self.wanted = wanted
        self.name: str = wanted.durable_name
        self.check_every = check_every
        self.floor: int | None = None
        """The highest ack floor seen while intact: everything up to it was handled."""
        self._marker = RemakeMarker(marker_file(home, self.name), stream)
        self._marker_checked = False
        """Whether no marker can be on disk that this process has not dealt with (read, or
        cleared once the durable was found made with an ack floor at or above it): False at
        start, after a remake of its own (one whose create was refused leaves its floor
        there), when a look finds the durable missing or redefined (another process's remake
        may have kept one), and while a look finds one above the durable's ack floor."""
        self._looking = asyncio.Lock()

    async def ensure(self) -> None:
        """At start (and when the durable is gone): make it, or bring it to the wanted
        settings, or make it again when it was redefined. Raises :class:`StreamUnavailable`
        while JetStream cannot answer (the caller waits it out), :class:`BusError` else."""
        for _ in range(ROUNDS):
            if await self._look(settings_matter=True):
                return
        raise BusError(f"consumer {self.name} keeps changing under the service; see the log")

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[None]:
        """Look at the durable every ``check_every`` seconds, in a task beside the block
        (the loop fetching from it), until the block ends."""
        watcher = asyncio.create_task(self._watch(), name=f"guard of {self.name}")
        try:
            yield
        finally:
            try:
                # Never in the middle of a look: one cut between its delete and its create
                # would leave the durable gone until the next start (which makes it from the
                # floor the remake kept on disk).
                async with self._looking:
                    watcher.cancel()
            finally:
                watcher.cancel()  # (this task was cancelled while a look ended)
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.check_every)
            await self.check()

    async def check(self) -> None:
        """One look, and what it calls for. A bus that does not answer is left to the next
        look: nothing is lost meanwhile."""
        try:
            await self._look(settings_matter=False)
        except StreamUnavailable as exc:
            log.info("%s: looking at its consumer: %s; looking again later", self.name, exc)
        except Exception:  # the watcher must outlive any one look; the loop never sees it
            log.warning("%s: looking at its consumer failed", self.name, exc_info=True)

    async def _look(self, *, settings_matter: bool) -> bool:
        """One look, and what it calls for; True when the durable is as the service made it.
        (Settings are compared at start only: processes with other settings, say during an
        upgrade, would otherwise make it again in turns.)"""
        async with self._looking:
            info = await self._info()
            if info is None:  # not made yet; or deleted, once this process had seen it
                self._marker_checked = False  # a remake of another process's may be cut short
                floor = await self._known_floor()
                level = logging.INFO if floor is None else logging.WARNING
                log.log(level, "%s: its consumer is missing; making it", self.name)
                return await self._remake(delete=False)
            if redefined(info.config, self.name):
                self._marker_checked = False  # as above
                floor = await self._known_floor()
                log.warning(
                    "%s: its consumer was redefined by a client (filter now %s); making it "
                    "again from event %d, after the last it is known to have handled",
                    self.name,
                    _filters(info.config),
                    (floor or 0) + 1,
                )
                return await self._remake(delete=True)
            acked = (info.ack_floor.stream_seq if info.ack_floor else 0) or 0
            if not self._marker_checked and await self._marker_passed(acked):
                self._marker.clear()
                self._marker_checked = True
            self.floor = max(self.floor or 0, acked)
            if settings_matter and not same_settings(info.config, self.wanted):
                log.info("%s: its consumer's settings changed; making it again", self.name)
                return await self._remake(delete=True)
            return True

    async def _marker_passed(self, acked: int) -> bool:
        """Whether a marker on disk (if any) may go, the durable found intact with ``acked``
        as its ack floor: none is there, it is of another incarnation of the stream or
        unreadable, or its floor is at or below ``acked`` (the durable keeps that floor
        itself). One above it is left: it may be the floor of another process's remake
        between its write and its delete (that process may be killed after the delete, and
        the floor would then be nowhere on disk), or one kept before a durable made from a
        lower floor has handled its way past it; the remake that wrote it clears it, or a
        later look once the durable's ack floor has passed it."""
        if not self._marker.exists():
            return True
        kept = self._marker.read(await self._stream_created())
        if kept is None or kept <= acked:
            return True
        log.debug(
            "%s: leaving the floor %d kept in %s: its consumer has handled up to %d",
            self.name,
            kept,
            self._marker.path,
            acked,
        )
        return False

    async def _known_floor(self) -> int | None:
        """The floor remembered here, or the higher one a remake kept on disk (for this
        incarnation of the stream) while a marker may be there that this process has not
        dealt with: before it has seen the durable intact, or since a remake or a look that
        may have left one. Both were read off the durable intact: everything up to either
        was handled."""
        if not self._marker_checked and self._marker.exists():
            kept = self._marker.read(await self._stream_created())
            if kept is not None and kept > (self.floor or 0):
                self.floor = kept
                log.warning(
                    "%s: a remake of its consumer was cut short; making it from event %d "
                    "(kept in %s)",
                    self.name,
                    kept + 1,
                    self._marker.path,
                )
        return self.floor

    async def _remake(self, *, delete: bool) -> bool:
        """Delete it (unless it is gone) and make it from the floor, which is kept on disk
        from before the delete until it is made."""
        # Until this remake has made the durable, a marker may be on disk: the floor kept
        # below, left there when another process's create came first (a lost race: that
        # process removed the marker before this one wrote it, or never got to). The next
        # look deals with it again rather than take it as dealt with.
        self._marker_checked = False
        if self.floor:
            self._marker.keep(self.floor, await self._stream_created())
        if delete:
            await self._delete()
            if self.floor:
                # Again: a look of another process's that read the durable intact before
                # the delete may have removed it meanwhile (its floor at or below the one
                # it read), and the floor must be on disk while the durable is gone.
                self._marker.keep(self.floor, await self._stream_created())
        made = await self._make(self.floor)
        if made:
            self._marker.clear()
            self._marker_checked = True
        return made

    async def _stream_created(self) -> str:
        """When the stream was created: which incarnation of it a kept floor is of."""
        with bus_errors(f"looking at stream {self._stream}"):
            info = await self._js.stream_info(self._stream)
        return info.created.isoformat() if info.created else ""

    async def _info(self) -> ConsumerInfo | None:
        with bus_errors(f"looking at consumer {self.name}"):
            try:
                info: ConsumerInfo = await self._js.consumer_info(self._stream, self.name)
            except NotFoundError:
                return None
        return info

    async def _delete(self) -> None:
        # NotFound: another of the service's processes was first.
        with bus_errors(f"deleting consumer {self.name}"), contextlib.suppress(NotFoundError):
            await self._js.delete_consumer(self._stream, self.name)

    async def _make(self, floor: int | None) -> bool:
        """Create it from ``floor``; False when one of that name appeared meanwhile (the next
        look decides about it)."""
        refused = await create_consumer(self._nc, self._stream, made_from(self.wanted, floor))
        if refused is not None:
            log.warning(
                "%s: making its consumer was refused (%s); looking again", self.name, refused
            )
            return False
        return True
