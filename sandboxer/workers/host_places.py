"""The control worker's side of a host's places: take one when placing, give back the stale.

Placement (:mod:`sandboxer.workers.host_choice`) takes the chosen host's place in
the log (:mod:`sandboxer.domain.host_places`) once its probe answered, before
the sandbox is appended: two control workers placing on one host at once
conflict on its expected sequence, and the one that decides again finds it
full. Only hosts that set ``max_sandboxes`` have places; any other create
(ext.local's, a hosted backend's, one on a host without a limit) appends
nothing more.

A full host's places are checked against their sandboxes, and those held by
a sandbox that no longer holds one are freed first, each once
(:func:`take_place`); one held far too long by a create that never appended
has its sandbox id given up first (:func:`~sandboxer.domain.host_places.place_stranded`). A create refused after its place was taken (cut off and
sent again, refused for credits) gives its sandbox id up, so no slower
delivery of it can still append, and frees its place (:func:`give_up_places`).
A recreate of a failed sandbox takes a place on its host before its append
(:func:`apply_recreate`), as a create does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from sandboxer.bus.event_store import EventStore, Loaded, LoadedPlaces
from sandboxer.clock import utc_now
from sandboxer.commands.types import CreateSandbox, RecreateSandbox, RestoreSnapshot
from sandboxer.config.hosts import HostConfig
from sandboxer.domain.host_places import (
    FreePlace,
    TakePlace,
    may_hold_places,
    place_given_up,
    place_stranded,
)
from sandboxer.domain.sandbox_decide import AbandonCreate, AdmittedCreate, decide
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.errors import ConcurrencyConflict, Rejected
from sandboxer.events.actor import SYSTEM_ACTOR
from sandboxer.workers.deciding import DECIDE_ATTEMPTS, apply, apply_places

__all__ = ["apply_recreate", "give_up_places", "take_place", "take_recreate_place"]


async def take_place(store: EventStore, host: str, limit: int, admitted: AdmittedCreate) -> None:
    """Hold one of ``host``'s ``limit`` places for ``admitted``'s sandbox, or raise Rejected
    (``host_full``) naming how many hold one."""
    take = TakePlace(
        command_id=admitted.command.command_id,
        actor=admitted.command.actor,
        sandbox_id=admitted.sandbox_id,
        extension=admitted.extension,
        limit=limit,
    )
    await _take(store, host, take)


async def take_recreate_place(
    store: EventStore, hosts: Mapping[str, HostConfig], recreate: RecreateSandbox, sandbox: Loaded
) -> None:
    """Hold a place on its host for the failed sandbox ``recreate`` brings back, as a create
    takes one before its append, or raise Rejected (``no_host``: its host is full).

    A failed sandbox holds its place no longer (:func:`place_given_up`): a create that
    found its host full took it, and the recreate, which keeps the host, made the host
    hold one sandbox more than its ``max_sandboxes`` (until 2026-12-04). A place it still
    holds is taken again under the recreate (``renew``), so a look that judged it failed
    just before the recreate's append frees nothing. A live sandbox's recreate renews its
    place the same way when it holds one (it may fail before the recreate is decided) and
    takes none when it does not: it adds no sandbox to the host. Nothing for a sandbox
    whose host has no limit, or that the recreate refuses anyway (decided as it is)."""
    state = sandbox.state
    host, extension = state.host, state.extension
    if host is None or extension is None or host not in hosts:
        return
    limit = hosts[host].max_sandboxes
    if limit is None:
        return
    try:
        if not decide(state, recreate, utc_now()):
            return  # decided already (sent again): its place was taken then
    except Rejected:
        return  # refused as it is: deciding it says why, with nothing taken
    take = TakePlace(
        command_id=recreate.command_id,
        actor=recreate.actor,
        sandbox_id=state.sandbox_id,
        extension=extension,
        limit=limit,
        renew=True,
    )
    if state.status != "failed":
        places = await store.load_places(host)
        if state.sandbox_id in places.state.places:
            await apply_places(store, host, take, places)
        return
    try:
        await _take(store, host, take)
    except Rejected as full:  # no_host, as a create no host can take is refused
        raise Rejected(
            "no_host",
            f"{full.reason}; a recreate brings the sandbox back on its own host: "
            f"destroy a sandbox there, or raise its max_sandboxes in the hosts file",
        ) from full


PlaceBasis = tuple[str | None, str | None, bool]
"""What a recreate's place was taken on: the sandbox's host, its backend, whether it failed."""


def _basis(sandbox: SandboxState) -> PlaceBasis:
    return sandbox.host, sandbox.extension, sandbox.status == "failed"


def _on(basis: PlaceBasis) -> Callable[[SandboxState], bool]:
    return lambda sandbox: _basis(sandbox) == basis


async def apply_recreate(
    store: EventStore,
    recreate: RecreateSandbox,
    hosts_of: Callable[[str | None], Mapping[str, HostConfig] | None],
) -> Loaded:
    """Decide and append ``recreate``, its place taken first (:func:`take_recreate_place`)
    when its backend places on hosts (``hosts_of`` gives their hosts, else None).

    The recreate is decided only on a sandbox as its place was taken for (``only_if``): one
    that failed, or moved, between the place and the append has it taken again on what it
    is now, so a ready sandbox that failed meanwhile is not brought back on no place."""
    for _ in range(DECIDE_ATTEMPTS):
        loaded = await store.load(recreate.sandbox_id)
        hosts = hosts_of(loaded.state.extension)
        if hosts is None:
            return (await apply(store, recreate.sandbox_id, recreate, loaded))[0]
        await take_recreate_place(store, hosts, recreate, loaded)
        on_it = _on(_basis(loaded.state))
        loaded, changed = await apply(store, recreate.sandbox_id, recreate, loaded, only_if=on_it)
        if changed or recreate.command_id in loaded.state.handled:
            return loaded
    raise ConcurrencyConflict(
        f"sandbox {recreate.sandbox_id} kept changing while its recreate took its place; "
        f"gave up after {DECIDE_ATTEMPTS} attempts",
        sandbox_id=recreate.sandbox_id,
    )


async def _take(store: EventStore, host: str, take: TakePlace) -> None:
    try:
        await apply_places(store, host, take)
        return
    except Rejected:
        freed = await _free_given_up(store, await store.load_places(host), take.extension)
        if not freed:
            raise
    await apply_places(store, host, take)  # once more, on the places freed


async def _free_given_up(store: EventStore, loaded: LoadedPlaces, extension: str) -> bool:
    """Free the places of ``extension``'s sandboxes on the host that hold one no longer;
    whether any was."""
    host = loaded.state.host
    freed = False
    for sandbox_id, place in loaded.state.holders(extension).items():
        sandbox = (await store.load(sandbox_id)).state
        if place_stranded(place, sandbox, utc_now()):
            lost = AbandonCreate(
                command_id=place.taken_by,
                actor=SYSTEM_ACTOR,
                code="place_stranded",
                reason=f"its place on {host} was held since {place.at} with nothing appended",
            )
            sandbox = (await apply(store, sandbox_id, lost))[0].state
        why = place_given_up(host, place, sandbox, utc_now())
        if why is None:
            continue
        free = FreePlace(
            command_id=f"free-{place.taken_by}",
            actor=SYSTEM_ACTOR,
            sandbox_id=sandbox_id,
            taken_by=place.taken_by,
            reason=why,
        )
        await apply_places(store, host, free)
        freed = True
    return freed


async def give_up_places(
    store: EventStore,
    hosts: Mapping[str, HostConfig],
    sandbox_id: str,
    create: CreateSandbox | RestoreSnapshot,
    code: str,
    reason: str,
) -> None:
    """Free the places ``create`` took for ``sandbox_id`` when it is refused (``code``,
    ``reason``) with nothing of the sandbox appended.

    Its place was taken before its append; cut off in between and sent again, or refused
    after it (for credits, say), the sandbox has no events, and a place whose sandbox has
    none is held (its create may be about to append). So the id is given up first
    (``create_abandoned``, under the sandbox's expected sequence: it and any ``requested``
    exclude each other), as a refused create's credit hold is, and the place freed only
    then. Asked on every refusal of a create, before it is acked: a worker killed in
    between refuses it again when it is redelivered, and finishes this. The hosts' places
    are read only for an id with no sandbox (:func:`may_hold_places`)."""
    capped = [host for host, config in hosts.items() if config.max_sandboxes is not None]
    if not capped:
        return  # no limits: no places
    sandbox = (await store.load(sandbox_id)).state
    if not may_hold_places(sandbox):
        return
    placed = {}
    for host in capped:
        place = (await store.load_places(host)).state.places.get(sandbox_id)
        # The same command id of another project (ids are one namespace) took nothing.
        if (
            place is not None
            and place.taken_by == create.command_id
            and place.project == create.actor.project
        ):
            placed[host] = place
    if not placed:
        return
    if sandbox.status == "new" and sandbox.abandoned_by is None:
        abandon = AbandonCreate(
            command_id=create.command_id, actor=create.actor, code=code, reason=reason
        )
        sandbox = (await apply(store, sandbox_id, abandon))[0].state
    for host, place in placed.items():
        why = place_given_up(host, place, sandbox, utc_now())
        if why is not None:  # else: appended after all (a delivery of it came first)
            free = FreePlace(
                command_id=create.command_id,
                actor=create.actor,
                sandbox_id=sandbox_id,
                taken_by=place.taken_by,
                reason=f"{why} ({code})",
            )
            await apply_places(store, host, free)
