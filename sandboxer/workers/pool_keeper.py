"""The pool keeper: keeps each pooled profile's warm members made, and hands them to creates.

It runs beside an extension worker whose backend can pool (``capabilities.pool``,
docs/pools.md). Three rules keep a pool honest:

- **The log says who has what.** Every member is its own aggregate. ``added`` is
  appended before anything is made, ``ready`` once it answers, and a create's
  ``claimed`` expects ``ready`` as the member's last event: of any number of
  claimers, across processes, exactly one gets a member. What the keeper holds
  in memory (:class:`~sandboxer.domain.pool_state.PoolIndex`) is a cache of the
  log, caught up a page at a time; a stale cache costs a conflict, not a
  double claim.
- **Nothing is left behind.** Members the log calls removed, claimed by a create
  that has moved on, or made by a keeper that died, are torn down by
  :meth:`PoolKeeper.reconcile` (at start and every few seconds). A worker that
  stops (``sandboxer down``) drains its node's unclaimed members. A kill -9
  leaves them, and the next keeper adopts them from the log.
- **Members are no one's sandboxes.** They live under the backend's pool
  directory, are in no listing, have no TTL and cost nothing, until claimed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterator, Mapping
from typing import Any

from nats.aio.client import Client

from sandboxer import subjects
from sandboxer.bus.direct_get import read_subject
from sandboxer.bus.event_store import EventStore, LoadedMember
from sandboxer.bus.publish import is_unavailability
from sandboxer.bus.responder import Responder
from sandboxer.clock import utc_now
from sandboxer.config.catalog import Catalog
from sandboxer.config.profile import Profile
from sandboxer.domain.pool_state import (
    AddMember,
    ClaimMember,
    MarkMemberReady,
    MemberCommand,
    MemberState,
    PoolIndex,
    RemoveMember,
    decide_member,
    is_member_id,
    new_member_id,
    plan_pool,
    pool_key,
    profile_digest,
)
from sandboxer.errors import ConcurrencyConflict, Rejected, UnknownEventType
from sandboxer.events.codec import decode_event
from sandboxer.events.pool_events import POOL_EVENTS
from sandboxer.events.types import PoolEvent
from sandboxer.extensions.base import ProvisionRequest
from sandboxer.extensions.capabilities import Pooling
from sandboxer.ids import new_command_id
from sandboxer.incarnation import incarnation

__all__ = ["PoolKeeper", "digest_of", "pool_keeper_for"]

log = logging.getLogger(__name__)

TICK = 0.2
"""Seconds between looks at the pools when nothing wakes the keeper."""
QUIET_AFTER_CLAIM = 0.1
"""Seconds a refill waits after the last claim: a burst of creates is served first, and the
pool is made again once it is over, rather than competing with it for the machine."""
RECONCILE_EVERY = 5.0
MAKING_AT_ONCE = 8
"""Members made concurrently: a refill after a burst must not starve the creates."""
DIGEST_CACHE = 256
"""Profile objects whose digest a keeper remembers (see ``PoolKeeper._digest``)."""


def digest_of(profile: Profile) -> str:
    """What a member must have been made for to serve a create of ``profile`` as in force
    (a create may have narrowed its network policy; the entries are canonical whatever the
    profile's file said, so equal policies digest alike)."""
    return profile_digest(profile.model_dump_json(exclude={"pool"}).encode())


def pool_keeper_for(
    nc: Client, store: EventStore, catalog: Catalog, extension: Any
) -> PoolKeeper | None:
    """A keeper for ``extension`` when its declaration pools: it keeps the pools profiles ask
    for, and drains members no profile pools any more (``pools_anything`` False: only that,
    once, at the worker's start)."""
    decl = catalog.extensions_enabled().get(extension.id)
    if decl is None or not decl.capabilities.pool or not isinstance(extension, Pooling):
        return None
    return PoolKeeper(nc, store, catalog, extension)


class PoolKeeper:
    def __init__(
        self,
        nc: Client,
        store: EventStore,
        catalog: Catalog,
        extension: Pooling,
        *,
        worker: str | None = None,
    ) -> None:
        self._nc = nc
        self._store = store
        self._extension = extension
        self._members = extension.pool_members()
        self.node = extension.pool_node
        # The nonce tells two keepers of one process apart (services started in tests); the
        # process's start and the boot tell this process from a later one with its pid.
        self.worker = worker or (
            f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}:{incarnation(os.getpid())}"
        )
        decl = catalog.extensions.get(extension.id)
        fallback = decl.pool if decl is not None else None
        # Each pooled profile, its pool in force: its own, or else its backend declaration's.
        self._profiles = {
            profile.id: profile.model_copy(update={"pool": profile.pool or fallback})
            for profile in catalog.profiles.values()
            if profile.extension == extension.id and (profile.pool or fallback) is not None
        }
        self.index = PoolIndex()
        self._last_seq: dict[str, int] = {}
        self._making: set[str] = set()
        self._taken: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._last_claim = 0.0
        self._digests: dict[int, tuple[Profile, str]] = {}
        self._limit = asyncio.Semaphore(MAKING_AT_ONCE)
        self._responder = Responder(nc)

    @property
    def pools_anything(self) -> bool:
        return bool(self._profiles)

    @property
    def _pools(self) -> set[str]:
        """The pools this node keeps now (one per pooled profile)."""
        return {self.pool_of(profile_id) for profile_id in self._profiles}

    def serves(self, profile_id: str) -> bool:
        """Whether creates of ``profile_id`` may be served from a pool here."""
        return profile_id in self._profiles

    def pool_of(self, profile_id: str) -> str:
        return pool_key(self._extension.id, self.node, profile_id)

    # -- the loop ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        await self._responder.serve({subjects.QUERY_POOL_LIST: self._answer_list})
        try:
            reconciled = time.monotonic() - RECONCILE_EVERY  # at the first look: start clean
            while not stop.is_set():
                if (wait := self._claimed_lately()) > 0:
                    await asyncio.sleep(wait)
                    continue
                try:
                    await self.catch_up()
                    if time.monotonic() - reconciled >= RECONCILE_EVERY:
                        reconciled = time.monotonic()  # a failed round waits for the next
                        await self.reconcile()
                    await self.refill_when_quiet()
                except Exception as exc:
                    # The bus away, a backend failing: the pool waits, creates go cold meanwhile.
                    level = logging.INFO if is_unavailability(exc) else logging.WARNING
                    log.log(level, "pool keeper: %s; trying again", exc)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(TICK):
                        await self._wake.wait()
        finally:
            await self._responder.stop()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.drain("drained: its worker stopped")

    async def catch_up(self) -> None:
        """Fold the pool events the index has not seen yet (one batched read)."""
        start = self.index.position + 1
        async for seq, data in read_subject(self._nc, subjects.POOL_EVENTS, start=start):
            try:
                event = decode_event(data)
            except UnknownEventType:
                continue
            if isinstance(event, POOL_EVENTS):
                self.index.apply(seq, event)
                self._last_seq[event.member_id] = seq
            self.index.position = max(self.index.position, seq)

    def _claimed_lately(self) -> float:
        """Seconds until the quiet after this keeper's last claim is over (0: it is)."""
        return max(0.0, QUIET_AFTER_CLAIM - (time.monotonic() - self._last_claim))

    async def refill_when_quiet(self) -> bool:
        """Start making what the pools lack, unless a claim came within the quiet period:
        whether it did. Asked again right before the refill, not only at the top of the loop:
        a burst that begins while the keeper reads the log (or reconciles) would otherwise meet
        a refill that started on its first claims (measured: 5 to 8 members made in the
        first 0.08 to 0.17 s of a burst of 100 pooled creates, in 2 bursts of 30)."""
        if self._claimed_lately() > 0:
            return False
        await self._refill()
        return True

    async def _refill(self) -> None:
        for profile in self._profiles.values():
            assert profile.pool is not None
            pool = self.pool_of(profile.id)
            plan = plan_pool(
                self.index.of_pool(pool),
                digest=digest_of(profile),
                min_ready=profile.pool.min_ready,
                max_members=profile.pool.max,
            )
            for member_id in plan.drain:
                if member_id not in self._taken:
                    await self._remove(
                        member_id, "drained: made for another version of the profile"
                    )
            room = MAKING_AT_ONCE - len(self._making)
            for _ in range(min(plan.add, max(0, room))):
                member_id = new_member_id()
                self._making.add(member_id)
                task = asyncio.create_task(self._make(profile, pool, member_id))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _make(self, profile: Profile, pool: str, member_id: str) -> None:
        """Add one member: on record first, then made, then ready (or removed, why)."""
        round_id = new_command_id()
        try:
            async with self._limit:
                await self._decide(
                    member_id,
                    AddMember(
                        member_id=member_id,
                        pool=pool,
                        profile=profile.id,
                        profile_version=profile.version,
                        digest=digest_of(profile),
                        extension=self._extension.id,
                        node=self.node,
                        worker=self.worker,
                        round_id=round_id,
                    ),
                    MemberState(member_id=member_id),
                )
                request = ProvisionRequest(
                    sandbox_id=member_id,
                    profile=self._extension.member_profile(profile),
                    inputs={},
                )
                try:
                    await self._members.provision(request)
                    await self._members.wait_ready(request)
                except asyncio.CancelledError:
                    await self._remove(member_id, "drained: its worker stopped while making it")
                    raise
                except Exception as exc:
                    log.warning("pool %s: making member %s failed: %s", pool, member_id, exc)
                    await self._remove(member_id, f"making it failed: {exc}"[:2000])
                    return
                await self._decide(member_id, MarkMemberReady(round_id=round_id))
        finally:
            self._making.discard(member_id)
            self._wake.set()

    # -- claims -----------------------------------------------------------------------------

    async def claim(
        self, profile: Profile, sandbox_id: str, job_id: str, *, retry: bool
    ) -> str | None:
        """A ready member of ``profile``'s pool, now claimed for ``sandbox_id`` on record; None
        when the pool has none (the create is made cold). ``retry``: the job was delivered
        before, so a claim of it may already be on record."""
        if profile.id not in self._profiles:
            return None
        pool = self.pool_of(profile.id)
        digest = self._digest(profile)
        if retry:
            await self.catch_up()
            known = self.index.claimed_by.get(sandbox_id)
            if known is not None and await self._serves(known, pool, digest):
                return known
        while True:
            member = self._first_ready(pool, digest)
            if member is None:
                self._wake.set()
                return None
            self._taken.add(member.member_id)
            try:
                await self._decide(
                    member.member_id, ClaimMember(sandbox_id=sandbox_id, job_id=job_id), member
                )
            except (Rejected, ConcurrencyConflict):
                continue  # another worker had it: the index now knows; try the next
            finally:
                self._taken.discard(member.member_id)
            self._claimed()
            return member.member_id

    def pick(
        self, profile: Profile, sandbox_id: str, job_id: str
    ) -> tuple[LoadedMember, list[PoolEvent]] | None:
        """A ready member of ``profile``'s pool and the claim of it for ``sandbox_id``, for the
        caller to send (the extension worker sends it in one write with the sandbox's
        `provisioning` and `ready`); kept from this keeper's other claims until
        :meth:`unpick`. None when the pool has none ready."""
        if profile.id not in self._profiles:
            return None
        member = self._first_ready(self.pool_of(profile.id), self._digest(profile))
        if member is None:
            self._wake.set()
            return None
        try:
            events = decide_member(
                member, ClaimMember(sandbox_id=sandbox_id, job_id=job_id), utc_now()
            )
        except Rejected:
            return None
        self._taken.add(member.member_id)
        return LoadedMember(member, self._last_seq.get(member.member_id, 0)), events

    def unpick(self, member_id: str, claimed: LoadedMember | None) -> None:
        """The member :meth:`pick` gave is free for other claims again; ``claimed``: its claim
        landed, as this (the index knows it before its catch-up reads it)."""
        self._taken.discard(member_id)
        if claimed is not None:
            self._note(claimed)
            self._claimed()

    def _claimed(self) -> None:
        """A claim landed: the refill waits for the burst to be over, then runs."""
        self._last_claim = time.monotonic()
        self._wake.set()

    def _first_ready(self, pool: str, digest: str) -> MemberState | None:
        """The first ready member of ``pool`` made for ``digest`` and not being claimed here:
        the first one, not a list of them all (a claim per create)."""
        return next(
            (
                member
                for member in self.index.members.values()
                if member.pool == pool
                and member.status == "ready"
                and member.digest == digest
                and member.member_id not in self._taken
            ),
            None,
        )

    async def _serves(self, member_id: str, pool: str, digest: str) -> bool:
        """Whether a member claimed earlier for this sandbox may still be its own: made here
        for the profile as it stands. A worker restarted with a changed profile (its limits,
        its network, its workspace access) would otherwise run a redelivered create in a
        member made for the old one; it claims another then, and the old one is torn down
        (by reconcile, or by whatever takes the sandbox's directory it was moved to)."""
        member = self.index.members.get(member_id)
        if member is None:  # forgotten once moved: its record says what it was made for
            member = (await self._store.load_member(member_id)).state
        return member.pool == pool and member.digest == digest

    def _digest(self, profile: Profile) -> str:
        """``digest_of(profile)``, once per profile object: the catalog hands out the same
        object for every create of a profile, and dumping it to JSON costs a claim 0.1 ms."""
        cached = self._digests.get(id(profile))
        if cached is not None and cached[0] is profile:
            return cached[1]
        if len(self._digests) >= DIGEST_CACHE:  # objects made per create (a narrowed network)
            self._digests.clear()
        digest = digest_of(profile)
        self._digests[id(profile)] = (profile, digest)  # the object is kept: its id stays its
        return digest

    # -- upkeep -----------------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Square this node's member directories with the log: tear down what no one will
        use, record as removed what is gone."""
        found = {item.sandbox_id: item for item in await self._members.list_sandboxes()}
        # Read the log after the directories: a member another process added (its record
        # comes before its directory) or claimed and moved (its record comes before the
        # move) since the last catch-up is then known, not taken for a stray or a loss.
        await self.catch_up()
        for member_id, item in found.items():
            with self._on_its_own(member_id):
                await self._square(member_id, item.alive)
        for member in list(self.index.members.values()):
            if member.status in {"removed", "claimed"} and member.member_id not in found:
                # Its story is over (a claimed one is its sandbox now): the index lets it go.
                self.index.forget(member.member_id)
                self._last_seq.pop(member.member_id, None)
            elif self._lost(member, found):
                with self._on_its_own(member.member_id):
                    await self._remove(member.member_id, "it is gone from its node")

    async def _square(self, member_id: str, alive: bool) -> None:
        """One member directory against the log."""
        member = self.index.members.get(member_id)
        if member is None or member.status == "removed":
            await self._teardown(member_id)
        elif member.status == "claimed":
            if await self._claim_is_over(member):
                await self._teardown(member_id)
        elif member.status == "adding":
            if self._abandoned(member):
                await self._remove(member_id, "its keeper died while making it")
        elif not alive:
            await self._remove(member_id, "its processes died")
        elif member.pool not in self._pools and member_id not in self._taken:
            # Its profile lost its pool (or went, or moved to another backend) while no worker
            # ran to drain it: nothing would claim it, and it would run for good.
            await self._remove(member_id, "drained: no profile pools it here any more")

    async def release(self, member_id: str) -> None:
        """Square ``member_id`` with the log now, as the next reconcile would: a member claimed
        by a job that then found its sandbox needs none (delivered again once the sandbox
        was made, or destroyed) is torn down at once. Else its holder ran for no one until
        the reconcile, up to :data:`RECONCILE_EVERY` later, and only after claims went quiet
        (``make chaos``'s pool-claims found one still running past the cycles' end)."""
        found = {item.sandbox_id: item for item in await self._members.list_sandboxes()}
        if member_id not in found:
            return  # moved into its sandbox, or gone: nothing of the pool's is left
        await self.catch_up()
        with self._on_its_own(member_id):
            await self._square(member_id, found[member_id].alive)

    @contextlib.contextmanager
    def _on_its_own(self, member_id: str) -> Iterator[None]:
        """A member whose teardown keeps failing must not stop the upkeep of the others
        (nor the refill): say why, and try it again at the next reconcile. The bus away
        is not one member's trouble: that still ends the round."""
        try:
            yield
        except Exception as exc:
            if is_unavailability(exc):
                raise
            log.warning("pool: member %s: %s; trying again later", member_id, exc)

    def _lost(self, member: MemberState, found: Mapping[str, object]) -> bool:
        """One of this node's members the log counts on that the node no longer holds."""
        if member.node != self.node or member.member_id in found:
            return False
        return member.status == "ready" or (member.status == "adding" and self._abandoned(member))

    def _made_elsewhere(self, member: MemberState) -> bool:
        """Being made by another keeper of this node that still runs (it finishes it)."""
        return (
            member.status == "adding"
            and member.worker != self.worker
            and _process_alive(member.worker)
        )

    def _abandoned(self, member: MemberState) -> bool:
        """Being made, by no one: not by this keeper, and its maker's process is gone."""
        if member.member_id in self._making:
            return False
        return member.worker == self.worker or not _process_alive(member.worker)

    async def drain(self, reason: str) -> None:
        """Tear down every unclaimed member of this node (``sandboxer down``), and first what
        reconcile would: a member claimed by a create that failed before it took it (an input
        refused, a secret missing) is no one's, and after a stop no reconcile may come."""
        try:
            await self.reconcile()
        except Exception as exc:
            log.warning("pool: reconciling before the drain failed: %s", exc)
        for member in list(self.index.members.values()):
            if member.node == self.node and member.status in {"ready", "adding"}:
                if member.member_id in self._taken or self._made_elsewhere(member):
                    continue
                try:
                    await self._remove(member.member_id, reason)
                except Exception as exc:
                    log.warning("pool: draining member %s failed: %s", member.member_id, exc)

    async def _claim_is_over(self, member: MemberState) -> bool:
        """A claimed member still in the pool directory: its create moved it, or gave up."""
        if member.claimed_by is None:
            return True
        state = (await self._store.load(member.claimed_by)).state
        return state.status not in {"requested", "routed", "provisioning", "recreating"}

    async def _remove(self, member_id: str, reason: str) -> None:
        """On record first, then torn down: the removal's append expects the member's last
        event as the index saw it, so a create of another process that claimed it meanwhile
        keeps it (torn down first, its sandbox would lose its processes and network). A
        crash between the two leaves a removed member in the pool directory: reconcile's."""
        await self._decide(member_id, RemoveMember(reason=reason, round_id=new_command_id()))
        member = self.index.members.get(member_id)
        if member is None or member.status != "claimed":
            await self._teardown(member_id)

    async def _teardown(self, member_id: str) -> None:
        if is_member_id(member_id):
            await self._members.teardown(member_id)

    async def _decide(
        self, member_id: str, command: MemberCommand, known: MemberState | None = None
    ) -> None:
        """Decide and append on the member (from ``known``, the index's view, when given);
        on a conflict load it from the log and decide again, twice at most."""
        loaded = (
            LoadedMember(known, self._last_seq.get(member_id, 0))
            if known is not None
            else await self._store.load_member(member_id)
        )
        for attempt in range(3):
            try:
                events = decide_member(loaded.state, command, utc_now())
                if events:
                    loaded = await self._store.append_member(loaded, events)
                return
            except ConcurrencyConflict:
                if attempt == 2:
                    raise
                loaded = await self._store.load_member(member_id)
            finally:
                self._note(loaded)

    def _note(self, loaded: LoadedMember) -> None:
        """What this keeper just read or wrote of a member, until the catch-up reads it."""
        state = loaded.state
        self.index.members[state.member_id] = state
        if state.claimed_by is not None:
            self.index.note_claim(state.claimed_by, state.member_id)
        self._last_seq[state.member_id] = loaded.last_seq

    # -- the query --------------------------------------------------------------------------

    async def _answer_list(self, _request: dict[str, Any]) -> dict[str, Any]:
        counts = {str(entry["pool"]): entry for entry in self.index.summary()}
        pools = []
        for profile in self._profiles.values():
            assert profile.pool is not None
            pool = self.pool_of(profile.id)
            entry = counts.pop(pool, {"ready": 0, "provisioning": 0})
            pools.append(
                {
                    "pool": pool,
                    "profile": profile.id,
                    "extension": self._extension.id,
                    "node": self.node,
                    "min_ready": profile.pool.min_ready,
                    "max": profile.pool.max,
                    "ready": entry["ready"],
                    "provisioning": entry["provisioning"],
                }
            )
        return {"pools": pools}


def _process_alive(worker: str) -> bool:
    """Whether the keeper ``host:pid:nonce:start@boot`` that made a member still runs (this
    machine's). Its pid alone is not enough: after a restart (a container's pid 1, a reboot)
    another process has it, and the dead keeper's members were kept, and counted, for good.
    (Keepers before the start was recorded: by their pid, as then.)"""
    host, pid, _nonce, recorded = [*worker.split(":"), "", "", "", ""][:4]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not recorded or recorded == incarnation(int(pid))
