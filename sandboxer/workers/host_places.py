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
"""

from __future__ import annotations

from collections.abc import Mapping

from sandboxer.bus.event_store import EventStore, LoadedPlaces
from sandboxer.clock import utc_now
from sandboxer.commands.types import CreateSandbox, RestoreSnapshot
from sandboxer.config.hosts import HostConfig
from sandboxer.domain.host_places import FreePlace, TakePlace, place_given_up, place_stranded
from sandboxer.domain.sandbox_decide import AbandonCreate, AdmittedCreate
from sandboxer.errors import Rejected
from sandboxer.events.actor import SYSTEM_ACTOR
from sandboxer.workers.deciding import apply, apply_places

__all__ = ["give_up_places", "take_place"]


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
    try:
        await apply_places(store, host, take)
        return
    except Rejected:
        freed = await _free_given_up(store, await store.load_places(host), admitted.extension)
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
        why = place_given_up(host, place, sandbox)
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
    between refuses it again when it is redelivered, and finishes this."""
    placed = {}
    for host, config in hosts.items():
        if config.max_sandboxes is None:
            continue  # no limit: no places
        place = (await store.load_places(host)).state.places.get(sandbox_id)
        if place is not None and place.taken_by == create.command_id:
            placed[host] = place
    if not placed:
        return
    sandbox = (await store.load(sandbox_id)).state
    if sandbox.status == "new" and sandbox.abandoned_by is None:
        abandon = AbandonCreate(
            command_id=create.command_id, actor=create.actor, code=code, reason=reason
        )
        sandbox = (await apply(store, sandbox_id, abandon))[0].state
    for host, place in placed.items():
        why = place_given_up(host, place, sandbox)
        if why is not None:  # else: appended after all (a delivery of it came first)
            free = FreePlace(
                command_id=create.command_id,
                actor=create.actor,
                sandbox_id=sandbox_id,
                taken_by=place.taken_by,
                reason=f"{why} ({code})",
            )
            await apply_places(store, host, free)
