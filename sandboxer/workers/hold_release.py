"""Credit holds given back when no metering ever will: the control worker's give-backs.

A hold is made before anything of its sandbox is appended (:mod:`credit_reservation`), and
the meter releases it when the sandbox is destroyed. A hold whose sandbox is never made, or
whose extension the sandbox refused for good, would never be metered, and would tie up the
project's credits for good. Each is given back here, once:

- a create refused after its hold (:func:`give_up_refused_create`), its id given up first;
- a create whose sandbox id another project took (:func:`release_lost_reservation`);
- a create cut off after its hold and never sent again (:func:`release_stranded_holds`),
  when the project is next refused for credits and at each hold sweep
  (:mod:`hold_sweep`), whether nothing of its sandbox was appended or another project
  made a sandbox of its id;
- an extension its sandbox refused for good (:func:`release_refused_extension`).
"""

from __future__ import annotations

import logging

from sandboxer.bus.event_store import EventStore, LoadedAccount
from sandboxer.clock import utc_now
from sandboxer.commands.types import CreateSandbox, ExtendTtl, RestoreSnapshot
from sandboxer.domain.account_decide import (
    MeterUsage,
    ReleaseHold,
    extend_command_id,
    hold_stranded,
    meter_command_id,
    release_command_id,
    reserve_command_id,
)
from sandboxer.domain.account_state import Reservation, project_of
from sandboxer.domain.lost_creates import held_too_long
from sandboxer.domain.sandbox_decide import AbandonCreate
from sandboxer.domain.sandbox_lifetime import EXTEND_REFUSED_FOR_GOOD
from sandboxer.events.actor import SYSTEM_ACTOR, Actor
from sandboxer.recent import Recent
from sandboxer.workers.deciding import apply, apply_account

__all__ = [
    "give_up_refused_create",
    "release_lost_reservation",
    "release_refused_extension",
    "release_stranded_holds",
]

log = logging.getLogger(__name__)

_OWNERS: Recent[str, str] = Recent(10_000)
"""The project that owns each sandbox :func:`release_stranded_holds` found appended (a
sandbox with events never has none again, nor another owner): its own project's hold of it
is never a lost create's. Without it, each create of a project at its limit read the log of
every sandbox it has held for long."""


async def release_stranded_holds(
    store: EventStore, project: str, account: LoadedAccount
) -> list[str]:
    """Give back the holds of ``project``'s lost creates (:func:`hold_stranded`), each
    sandbox id given up first (``create_abandoned``, code ``hold_stranded``); the ids of
    the sandboxes whose holds were. A create cut off between its hold and its append is
    sent again, and its refusals give the hold back; one never sent again (its command gone
    from the commands stream) held the project's credits for ever. Each hold older than the
    limit has its sandbox's log read: the hold of a sandbox of the project is kept (its
    metering releases it); one whose id another project took is metered at zero, as
    :func:`release_lost_reservation` does for a create refused for it."""
    now = utc_now()
    released: list[str] = []
    for sandbox_id, held in sorted(account.state.reservations.items()):
        if held.created_by is None or not held_too_long(held.held_since, now):
            continue  # not a create's, or too young: not lost
        owner = _OWNERS.get(sandbox_id)
        if owner is None:
            sandbox = (await store.load(sandbox_id)).state
            if sandbox.status == "new":  # nothing of it appended: lost, unless given up
                if hold_stranded(held, sandbox, now) and await _give_up_and_release(
                    store,
                    project,
                    sandbox_id,
                    held.created_by,
                    SYSTEM_ACTOR,
                    "hold_stranded",
                    f"its credits were held since {held.held_since} with nothing appended",
                ):
                    _gave_back(project, held, sandbox_id, "whose create never appended it")
                    released.append(sandbox_id)
                continue
            owner = project_of(sandbox.actor)
            _OWNERS.put(sandbox_id, owner)
        # Its own sandbox's hold is released when it is metered. Another project's sandbox
        # has the id for good: no create of this project is ever appended on it, and its
        # metering is on the other account.
        if owner != project and await _meter_at_zero(
            store, project, sandbox_id, SYSTEM_ACTOR, held.created_by
        ):
            _gave_back(project, held, sandbox_id, f"whose id project {owner} took")
            released.append(sandbox_id)
    return released


def _gave_back(project: str, held: Reservation, sandbox_id: str, why: str) -> None:
    log.warning(
        "project %s: gave back the credits held since %s for sandbox %s, %s",
        project,
        held.held_since,
        sandbox_id,
        why,
    )


async def release_lost_reservation(
    store: EventStore, sandbox_id: str, create: CreateSandbox | RestoreSnapshot
) -> None:
    """Give back what ``create`` reserved for ``sandbox_id`` if another project took the id.

    Two projects' creates naming one sandbox id may both reserve (``reserve-<id>``, on each
    one's account) before either appends; the loser is rejected (``sandbox_exists``, or
    ``internal_error`` when its handler kept failing), and the sandbox it reserved for is
    not its own, so no metering of it would ever release its hold. It is metered here
    instead, at zero: its ``meter-<id>`` releases the hold. The project that owns the
    sandbox keeps its reservation (a create re-sent for its own sandbox is refused the
    same way)."""
    project = project_of(create.actor)
    owner = (await store.load(sandbox_id)).state.actor
    if owner is None or project_of(owner) == project:
        return
    await _meter_at_zero(store, project, sandbox_id, create.actor, create.command_id)


async def _meter_at_zero(
    store: EventStore, project: str, sandbox_id: str, actor: Actor, causation_id: str
) -> bool:
    """Release ``project``'s hold of ``sandbox_id``, another project's sandbox, by metering
    it at zero (``meter-<id>``: once, whoever asks first); whether there was one."""
    account = await store.load_account(project)
    held = account.state.reservations.get(sandbox_id)
    if held is None:
        return False
    release = MeterUsage(
        command_id=meter_command_id(sandbox_id),
        causation_id=causation_id,
        actor=actor,
        sandbox_id=sandbox_id,
        extension=held.extension,
        profile=held.profile,
        seconds=0,
    )
    await apply_account(store, project, release, account)
    return True


async def give_up_refused_create(
    store: EventStore,
    sandbox_id: str,
    create: CreateSandbox | RestoreSnapshot,
    code: str,
    reason: str,
) -> None:
    """Give back the hold ``create`` made for ``sandbox_id`` when it is refused (``code``,
    ``reason``) and nothing of the sandbox was appended.

    A create holds (``reserve-<id>``) before it appends ``requested``; cut off in between
    (kill -9, a conflict) and sent again, it may be refused (its hosts down, its profile
    gone, its key's live limit, its handling failing past its deliveries), and nothing
    would ever meter or release that hold: the account showed it reserved for good. A
    slower delivery of the same create may still be about to append on it, so the id is
    given up first (``create_abandoned`` on the sandbox, under the sandbox's own
    expected sequence: it and any ``requested`` exclude each other), and the hold given
    back only once the sandbox is known never to be made (``credits_released``, command id
    ``release-reserve-<id>``: once). A sandbox of its project that was appended keeps its
    hold, which its metering releases; one another project made has the id for good, and
    the project's hold of it is given back as :func:`release_lost_reservation` does (no
    create of the project can be appended on it). Any other hold another create made is
    not this one's to give back. ``create.actor`` is taken as it is: the caller gives back
    only for an actor the command's publisher may claim (bus_identity.vouches_for)."""
    project = project_of(create.actor)
    owner = (await store.load(sandbox_id)).state.actor
    if owner is not None and project_of(owner) != project:
        # Another project's sandbox has the id (refused sandbox_exists, or before it
        # decided, say its hosts down): no delivery of this create can ever be appended.
        await release_lost_reservation(store, sandbox_id, create)
        return
    account = await store.load_account(project)
    held = account.state.reservations.get(sandbox_id)
    if held is None or held.created_by != create.command_id:
        return  # refused before its hold, given back already, or another create's hold
    await _give_up_and_release(
        store, project, sandbox_id, create.command_id, create.actor, code, reason, account
    )


async def _give_up_and_release(
    store: EventStore,
    project: str,
    sandbox_id: str,
    create_id: str,
    actor: Actor,
    code: str,
    reason: str,
    account: LoadedAccount | None = None,
) -> bool:
    """Give ``sandbox_id`` up for its create ``create_id`` (``create_abandoned``: any later
    ``requested`` of it is refused), then its create's hold back; whether it was given back
    (not when the create was appended after all: a delivery of it came first, and the
    sandbox is metered when it ends)."""
    abandon = AbandonCreate(command_id=create_id, actor=actor, code=code, reason=reason)
    sandbox = (await apply(store, sandbox_id, abandon))[0].state
    if sandbox.status != "new" or sandbox.abandoned_by is None:
        return False
    hold = reserve_command_id(sandbox_id)
    release = ReleaseHold(
        command_id=release_command_id(hold),
        causation_id=create_id,
        actor=actor,
        sandbox_id=sandbox_id,
        hold=hold,
        reason=code,
    )
    await apply_account(store, project, release, account)
    return True


async def release_refused_extension(store: EventStore, command: ExtendTtl, code: str) -> None:
    """Give back what ``command`` reserved when its sandbox refused it for good (``code`` in
    :data:`EXTEND_REFUSED_FOR_GOOD`). :func:`reserve_for_extend` holds before the sandbox
    decides, under the sandbox's own check; a sandbox changed in between (another extension
    appended meanwhile) refuses it on the append, and the hold tied up the project's credits
    (its later creates refused for budget) until the sandbox was metered. Asked on every
    such refusal, the first delivery's or a later one's (the check before the hold refuses
    it too), so a worker cut off after the refusal gives it back when it is redelivered; no
    delivery can append it after, so nothing it carries out runs on a hold given back."""
    if code not in EXTEND_REFUSED_FOR_GOOD:
        return
    state = (await store.load(command.sandbox_id)).state
    if state.actor is None:
        return
    project = project_of(state.actor)
    hold = extend_command_id(state.sandbox_id, command.command_id)
    account = await store.load_account(project)
    held = account.state.reservations.get(state.sandbox_id)
    if held is None or hold not in held.extensions:
        return  # nothing held for it (refused before its hold), or given back already
    release = ReleaseHold(
        command_id=release_command_id(hold),
        causation_id=command.command_id,
        actor=command.actor,
        sandbox_id=state.sandbox_id,
        hold=hold,
        reason=code,
    )
    await apply_account(store, project, release, account)
