"""The control worker's credit checks: reserve before a metered create or extension is
appended, and decide the account commands (``add_credits``, ``set_budget``, ``set_byok``).

A create touches two aggregates, the project's account and the sandbox, so it
is two idempotent appends, the account's first: ``credits_reserved`` (command
id ``reserve-<sandbox_id>``), then ``requested`` + ``routed``. A crash between
them is completed by the redelivered command, which finds its reservation
already decided and appends the create; a create the account cannot pay for
is rejected before any job exists, so no provider is ever called for it. One
refused after its hold, before its append, gives the id up and then the hold
back: :mod:`~sandboxer.workers.hold_release` gives back every hold no metering will.

Nothing is reserved on a backend whose price is zero (self-hosted ones, by
default), nor on one the project brings its own key for (BYOK): such
sandboxes are still metered when they end (:mod:`sandboxer.workers.meter_worker`).
Accounts change only through :func:`apply_account`, the deciding loop of
:mod:`sandboxer.workers.deciding` on the account's own history.
"""

from __future__ import annotations

import logging
from decimal import Decimal

from sandboxer.bus.event_store import EventStore, LoadedAccount
from sandboxer.clock import utc_now
from sandboxer.commands.types import (
    AddCredits,
    ExtendTtl,
    SetBudget,
    SetByok,
)
from sandboxer.config.catalog import Catalog, known_extension_class
from sandboxer.config.extension_decl import ExtensionDecl
from sandboxer.domain.account_decide import (
    SHORT_OF_CREDITS,
    ReserveCredits,
    check_id_not_held,
    extend_command_id,
    is_own_hold,
    reroute_reservation_id,
    reserve_command_id,
)
from sandboxer.domain.account_state import OPERATOR_KEY, own_key_pays, project_of
from sandboxer.domain.deadlines import ttl_with_extensions
from sandboxer.domain.pricing import (
    ceil_microusd,
    estimate_microusd,
    per_create_microusd,
    per_second_microusd,
)
from sandboxer.domain.sandbox_decide import AdmittedCreate, decide
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.durations import parse_duration
from sandboxer.errors import Rejected, SandboxerError
from sandboxer.workers.deciding import apply_account
from sandboxer.workers.hold_release import release_stranded_holds

__all__ = [
    "decide_account_command",
    "decimal_text",
    "reserve_for_create",
    "reserve_for_extend",
    "reserve_for_reroute",
    "takes_key",
    "wants_gpu",
]

log = logging.getLogger(__name__)


def decimal_text(value: Decimal) -> str:
    """A price as the events carry it: plain decimal notation, no exponent, no trailing zeros."""
    return format(value.normalize(), "f")


def wants_gpu(catalog: Catalog, profile_id: str | None) -> bool:
    """Whether the profile asks for a GPU (priced by ``gpu_per_second``)."""
    if profile_id is None:
        return False
    try:
        profile = catalog.profile(profile_id)
    except SandboxerError:
        return False  # a profile removed since: its sandboxes keep their reserved prices
    constraints = profile.route.constraints if profile.route else None
    return bool(profile.resources.gpu or (constraints and constraints.gpu))


async def decide_account_command(
    store: EventStore, catalog: Catalog, command: AddCredits | SetBudget | SetByok
) -> LoadedAccount:
    if isinstance(command, SetByok):
        _check_byok(catalog, command)
    loaded, _ = await apply_account(store, command.project, command)
    return loaded


def takes_key(decl: ExtensionDecl) -> bool:
    """Whether the backend calls a provider with a key a project may bring
    (:class:`~sandboxer.extensions.capabilities.KeyedBackend`)."""
    cls = known_extension_class(decl)
    return cls is not None and callable(getattr(cls, "with_key", None))


def _check_byok(catalog: Catalog, command: SetByok) -> None:
    """A project may bring its own key only to a backend that calls a provider with one. On
    any other (the stub, a self-hosted backend with a price) the project's key pays nothing,
    and BYOK only waives the price: that is an administrator's to grant."""
    if command.key_ref is None or command.actor.type == "adm":
        return
    decl = catalog.extensions_enabled().get(command.extension)
    if decl is None or not takes_key(decl):
        raise Rejected(
            "forbidden",
            f"{command.extension} takes no provider key of a project's (it is not an enabled "
            "hosted backend such as ext.e2b, ext.daytona or ext.modal): its own key there would "
            "only waive the price, which an administrator may do",
        )


def _priced(decl: ExtensionDecl | None, gpu: bool) -> tuple[Decimal, Decimal]:
    """(micro-USD per second, micro-USD per create) on a backend."""
    if decl is None:
        return Decimal(0), Decimal(0)
    return per_second_microusd(decl.pricing, gpu), per_create_microusd(decl.pricing)


async def reserve_for_create(
    store: EventStore, catalog: Catalog, admitted: AdmittedCreate
) -> str | None:
    """Reserve a metered create's estimate on its project's account, or raise Rejected
    (``insufficient_credits``, ``budget_exceeded``) before anything of the sandbox exists.

    Returns the sandbox's ``provider_key`` for its ``routed``, chosen from the same account:
    the project's own key's reference, or :data:`OPERATOR_KEY` (None on a backend that takes
    no key). Every later call for the sandbox uses that key, whatever the account says then:
    a sandbox made in one provider account is found, paused and torn down only in that one."""
    command = admitted.command
    decl = catalog.extensions_enabled().get(admitted.extension)
    gpu = wants_gpu(catalog, command.profile)
    per_second, per_create = _priced(decl, gpu)
    keyed = decl is not None and takes_key(decl)
    project = project_of(command.actor)
    if decl is None or (per_second == 0 and per_create == 0 and not keyed):
        # Free: metered at zero when it ends. Not checked against another create's hold of
        # the id, as a BYOK create is below: that would read the account on every free
        # create (a round trip, about a tenth of a create from a warm pool) for a create of
        # the same project cut off between its hold and its append, whose hold the meter
        # releases when this sandbox ends (docs/payments.md#reservation).
        return None
    sandbox = (await store.load(admitted.sandbox_id)).state
    if sandbox.status != "new" or sandbox.abandoned_by is not None:
        # Decided before (its reservation with it), taken, or given up (a create refused
        # after its hold): decide says which, and nothing is held for it.
        return None
    account = await store.load_account(project)
    own = account.state.byok.get(decl.id)
    key = (own or OPERATOR_KEY) if keyed else None
    if own is not None or (per_second == 0 and per_create == 0):
        # The project's own key pays (or the backend is free): nothing to reserve, and no
        # id another create holds (the account is in hand already).
        _check_not_held(account, admitted)
        return key
    amount = estimate_microusd(decl.pricing, admitted.ttl_seconds or 0.0, gpu)
    reservation = ReserveCredits(
        command_id=reserve_command_id(admitted.sandbox_id),
        causation_id=command.command_id,
        actor=command.actor,
        sandbox_id=admitted.sandbox_id,
        amount=amount,
        price=decimal_text(per_second),
        create_price=decimal_text(per_create),
        extension=decl.id,
        profile=command.profile,
        reason="create",
    )
    await _reserve(store, project, reservation, account)
    return key


async def _reserve(
    store: EventStore, project: str, reservation: ReserveCredits, account: LoadedAccount
) -> None:
    """Append ``reservation`` on ``project``'s account, or raise Rejected. Refused for
    credits or budget, it is decided once more if a lost create's hold was given back
    (:func:`~sandboxer.workers.hold_release.release_stranded_holds`): that is when such a
    hold costs the project anything."""
    try:
        await apply_account(store, project, reservation, account)
    except Rejected as refused:
        if refused.code not in SHORT_OF_CREDITS:
            raise
        if not await release_stranded_holds(store, project, account):
            raise
        await apply_account(store, project, reservation)


def _check_not_held(account: LoadedAccount, admitted: AdmittedCreate) -> None:
    """A create on the project's own key may not take an id another create of its project
    holds credits for (:func:`check_id_not_held`). Until 2026-12-04 it could: its sandbox
    was made, the other create (sent again) was refused ``sandbox_exists`` although it came
    first, and its hold stayed until this sandbox was metered. A create on a free backend
    still may (not checked: see :func:`reserve_for_create`)."""
    check_id_not_held(account.state, admitted.sandbox_id, admitted.command.command_id)


async def reserve_for_extend(store: EventStore, catalog: Catalog, command: ExtendTtl) -> None:
    """Reserve the extra time of an ``extend_ttl`` on a metered sandbox, at the price it was
    reserved at, or raise Rejected; an extension the sandbox refuses anyway is refused by
    the sandbox's own rules first (so nothing is reserved for it)."""
    loaded = await store.load(command.sandbox_id)
    state = loaded.state
    if command.command_id in state.handled or state.extension is None:
        return
    if not decide(state, command, utc_now()):  # raises the sandbox's own refusal
        return
    project = project_of(state.actor)
    account = await store.load_account(project)
    held = account.state.reservations.get(state.sandbox_id)
    if held is not None and not is_own_hold(
        held,
        provider_key=state.provider_key,
        created_by=state.created_by,
        extension=state.extension,
    ):
        # Another create's (one cut off before its append, or sent again and routed
        # elsewhere): its prices are not this sandbox's, as the meter judges it too.
        held = None
    if held is None and own_key_pays(state.provider_key, account.state.byok, state.extension):
        return
    if held is not None:
        per_second, per_create = Decimal(held.price), Decimal(held.create_price)
    else:
        decl = catalog.extensions_enabled().get(state.extension)
        per_second, per_create = _priced(decl, wants_gpu(catalog, state.profile))
    if per_second == 0:
        return
    reservation = ReserveCredits(
        command_id=extend_command_id(state.sandbox_id, command.command_id),
        causation_id=command.command_id,
        actor=command.actor,
        sandbox_id=state.sandbox_id,
        amount=ceil_microusd(per_second * Decimal(str(parse_duration(command.duration)))),
        price=decimal_text(per_second),
        create_price=decimal_text(per_create),
        extension=state.extension,
        profile=state.profile,
        reason="extend",
    )
    await _reserve(store, project, reservation, account)


async def reserve_for_reroute(
    store: EventStore, catalog: Catalog, state: SandboxState, extension: str, command_id: str
) -> str | None:
    """Move a rerouted sandbox's reservation to its new backend and that backend's prices
    (a ``reroute`` reservation replaces the old one), or raise Rejected when the project
    cannot pay for the new backend. Nothing is held on a free backend or under BYOK.
    Returns the ``provider_key`` for the new backend, as :func:`reserve_for_create` does."""
    if state.actor is None:
        return None
    project = project_of(state.actor)
    account = await store.load_account(project)
    held = account.state.reservations.get(state.sandbox_id)
    decl = catalog.extensions_enabled().get(extension)
    own = account.state.byok.get(extension)
    key = (own or OPERATOR_KEY) if decl is not None and takes_key(decl) else None
    gpu = wants_gpu(catalog, state.profile)
    per_second, per_create = _priced(decl, gpu)
    free = decl is None or own is not None or (per_second == 0 and per_create == 0)
    if free and held is None:
        return key
    amount, appended = 0, None
    if not free and decl is not None:
        # Its TTL as extended: the hold it replaces held every extension too (an extend_ttl
        # is taken while the sandbox is provisioning), and the time stays the sandbox's.
        amount = estimate_microusd(decl.pricing, ttl_with_extensions(state) or 0.0, gpu)
        # Those are the extensions appended; the account carries over any other extension
        # hold, of one still in flight (account_decide._carried_extensions). ``state`` may
        # be a little old: one appended since is carried over, not estimated: held once.
        appended = frozenset(extend_command_id(state.sandbox_id, c) for c in state.handled)
    reservation = ReserveCredits(
        command_id=reroute_reservation_id(state.sandbox_id, command_id),
        causation_id=command_id,
        actor=state.actor,
        sandbox_id=state.sandbox_id,
        amount=amount,
        price=decimal_text(Decimal(0) if free else per_second),
        create_price=decimal_text(Decimal(0) if free else per_create),
        extension=extension,
        profile=state.profile,
        reason="reroute",
        appended_extensions=appended,
    )
    await _reserve(store, project, reservation, account)
    return key
