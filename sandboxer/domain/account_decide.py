"""The account aggregate's rules: ``decide_account(state, command, now) -> events``. Pure.

Every command carries an id, and a command already decided decides nothing
(``handled``), so a redelivered create, a re-sent ``add_credits`` or a meter
message delivered twice never reserves, adds or debits twice. The ids of the
commands the service derives are deterministic: ``reserve-<sandbox_id>`` for
a create's reservation (one per sandbox, whatever command asked for it),
``extend-<command_id>`` for an extension's, ``meter-<sandbox_id>`` for the
metering of a sandbox's whole life.

A reservation is refused, with the numbers, when the account's available
credits (balance minus what is already reserved) do not cover it
(``insufficient_credits``), or when the period's spending plus everything
reserved plus it would pass the project's budget (``budget_exceeded``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Literal

from sandboxer.commands.types import AddCredits, SetBudget, SetByok
from sandboxer.domain.account_state import (
    OPERATOR_KEY,
    AccountBook,
    AccountState,
    Reservation,
    own_key_pays,
    period_key,
    reserve_command_id,
)
from sandboxer.domain.credit_amounts import format_credits
from sandboxer.domain.key_access import taken_refusal
from sandboxer.domain.lost_creates import create_lost
from sandboxer.domain.pricing import ceil_microusd
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.errors import Rejected
from sandboxer.events.account_events import (
    AccountEvent,
    BudgetSet,
    ByokSet,
    CreditsAdded,
    CreditsReleased,
    CreditsReserved,
    UsageMetered,
)
from sandboxer.events.actor import Actor

__all__ = [
    "MAX_BALANCE",
    "SHORT_OF_CREDITS",
    "AccountCommand",
    "MeterUsage",
    "ReleaseHold",
    "ReserveCredits",
    "check_id_not_held",
    "decide_account",
    "extend_command_id",
    "format_credits",
    "hold_stranded",
    "is_own_hold",
    "meter_command_id",
    "release_command_id",
    "reroute_reservation_id",
    "reserve_command_id",
]

MAX_BALANCE = 10**15
"""A billion USD in credits: more is a typo, and SQLite's integers stay far from overflow."""


def meter_command_id(sandbox_id: str) -> str:
    """The id of a sandbox's metering: one per sandbox, whichever delivery meters it."""
    return f"meter-{sandbox_id}"


def release_command_id(hold: str) -> str:
    """The id of the giving back of the hold ``hold`` (a reservation's command id): once."""
    return f"release-{hold}"


def extend_command_id(sandbox_id: str, command_id: str) -> str:
    """The id of an extension's reservation on the account: of this command on this sandbox."""
    return _of_command_on("extend", sandbox_id, command_id)


def reroute_reservation_id(sandbox_id: str, command_id: str) -> str:
    """The id of a reroute's reservation (never a sandbox's ``reserve-<id>``: ids hold no ``-``)."""
    return _of_command_on("reserve-reroute", sandbox_id, command_id)


def _of_command_on(prefix: str, sandbox_id: str, command_id: str) -> str:
    """A derived id naming one command on one sandbox. A command id alone is unique on its
    sandbox only: a client may send an id again on another sandbox once the bus forgets it
    (two minutes later), and the account, which had decided that id, took the second
    extension's reservation for done and held nothing for it. A reroute's id was also free
    to be a future sandbox's, whose create's ``reserve-<sandbox>`` it then pre-empted."""
    digest = hashlib.sha256(f"{sandbox_id}:{command_id}".encode()).hexdigest()[:32]
    return f"{prefix}-{digest}"


@dataclass(frozen=True, kw_only=True)
class ReserveCredits:
    """Hold ``amount`` for ``sandbox_id`` before its create (or extension) is appended."""

    command_id: str
    causation_id: str | None = None
    actor: Actor
    sandbox_id: str
    amount: int
    price: str
    create_price: str = "0"
    extension: str
    profile: str | None = None
    reason: Literal["create", "extend", "reroute"] = "create"
    appended_extensions: frozenset[str] | None = None
    """For a reroute to a paid backend: the holds (``extend-<digest>``) of the extensions the
    sandbox has appended, whose time ``amount`` estimates. Any other extension hold of the
    sandbox is of an extension still in flight (held, not yet appended): it is carried over
    at the new price (``carried``), or it was lost and its time, once appended, held
    nowhere. None: nothing carried over (a free fallback, BYOK)."""


@dataclass(frozen=True, kw_only=True)
class MeterUsage:
    """A sandbox ended: debit its billable ``seconds`` and release its reservation.

    ``price`` and ``create_price`` (micro-USD, decimal strings) are the declaration's, used
    only when nothing was reserved for the sandbox (a free backend; one whose price was
    zero when it was created); a reservation's prices win, so a sandbox keeps its price.
    """

    command_id: str
    causation_id: str | None = None
    actor: Actor
    sandbox_id: str
    extension: str | None
    profile: str | None
    seconds: int
    price: str = "0"
    create_price: str = "0"
    provider_key: str | None = None
    """The sandbox's ``provider_key`` (None when not recorded): whose key paid the provider."""
    created_by: str | None = None
    """The command id of the create that made the sandbox (its ``requested``'s; None: not
    known). A hold made for another create, or for another backend than ``extension``, is not
    this sandbox's: it is released, and the use metered at ``price`` and ``create_price``."""


@dataclass(frozen=True, kw_only=True)
class ReleaseHold:
    """Give back a hold nothing will use (``reason``: the refusal's code): an extension's
    (``hold``, its ``extend-<digest>``) that the sandbox refused for good, or a create's
    (``reserve-<sandbox_id>``, only when ``causation_id`` is the create it names) whose id
    was given up (``create_abandoned``) before anything of the sandbox was appended. The
    command id is :func:`release_command_id` of it, so it is given back once."""

    command_id: str
    causation_id: str | None = None
    actor: Actor
    sandbox_id: str
    hold: str
    reason: str


AccountCommand = AddCredits | SetBudget | SetByok | ReserveCredits | ReleaseHold | MeterUsage


def decide_account(book: AccountBook, command: AccountCommand, now: str) -> list[AccountEvent]:
    """The events ``command`` produces on the account; raises Rejected when it is not
    acceptable."""
    if command.command_id in book.handled:
        if isinstance(command, ReserveCredits):
            _check_own_hold(book.state, command)
        return []
    state = book.state
    head: dict[str, Any] = {
        "project": state.project,
        "command_id": command.command_id,
        "actor": command.actor,
        "at": now,
    }
    _check_allowed(state, command)
    match command:
        case AddCredits():
            if state.balance + command.amount > MAX_BALANCE:
                raise Rejected(
                    "invalid_amount",
                    f"adding {command.amount} would take {state.project}'s balance past "
                    f"{MAX_BALANCE} credits",
                )
            return [CreditsAdded(**head, amount=command.amount)]
        case SetBudget():
            return [BudgetSet(**head, limit=command.limit, period=command.period)]
        case SetByok():
            return [ByokSet(**head, extension=command.extension, key_ref=command.key_ref)]
        case ReserveCredits():
            if meter_command_id(command.sandbox_id) in book.handled:
                # An extension or a reroute decided before the destroy, appended after its
                # metering: held now, it would never be released.
                raise Rejected(
                    "already_destroyed",
                    f"sandbox {command.sandbox_id} was destroyed and its use metered; "
                    "nothing more is reserved for it",
                )
            carried = _carried_extensions(state, command)
            total = command.amount + sum(carried.values())
            _check_reservation(state, replace(command, amount=total), now)
            return [
                CreditsReserved(
                    **head,
                    causation_id=command.causation_id,
                    sandbox_id=command.sandbox_id,
                    amount=total,
                    price=command.price,
                    create_price=command.create_price,
                    extension=command.extension,
                    profile=command.profile,
                    reason=command.reason,
                    carried=carried,
                )
            ]
        case ReleaseHold():
            amount = _releasable(state, command)
            if amount is None:
                # Never held, or no longer: the sandbox was metered (every hold released) or
                # rerouted (its hold replaced by one for the extensions it took only).
                return []
            return [
                CreditsReleased(
                    **head,
                    causation_id=command.causation_id,
                    sandbox_id=command.sandbox_id,
                    hold=command.hold,
                    amount=amount,
                    reason=command.reason,
                )
            ]
        case MeterUsage():
            return [_metered(state, command, head)]


def _carried_extensions(state: AccountState, command: ReserveCredits) -> dict[str, int]:
    """The holds of extensions still in flight that a reroute carries over, at its price.

    An ``extend_ttl`` holds its time before it is appended, and a sandbox provisioning may
    be rerouted in between: the reroute's estimate covers only the extensions appended, and
    it replaces the sandbox's holds. The one in flight, appended after, had its time held
    nowhere (its hold id decided, it holds nothing again). Decided here, on the account the
    reservation is appended to, so an extension held meanwhile is not missed either."""
    held = state.reservations.get(command.sandbox_id)
    appended = command.appended_extensions
    if command.reason != "reroute" or appended is None or held is None:
        return {}
    old_price, new_price = Decimal(held.price), Decimal(command.price)
    return {
        hold: amount if old_price == 0 else ceil_microusd(amount * new_price / old_price)
        for hold, amount in held.extensions.items()
        if hold not in appended
    }


def _releasable(state: AccountState, command: ReleaseHold) -> int | None:
    """What of the hold ``command.hold`` is still held (None: nothing)."""
    held = state.reservations.get(command.sandbox_id)
    if held is None:
        return None
    if command.hold == reserve_command_id(command.sandbox_id):
        # A create's: the whole reservation (no sandbox was appended, so no extension or
        # reroute added to it), and only the create it names may give it back.
        own = held.created_by is not None and held.created_by == command.causation_id
        return held.amount if own else None
    return held.extensions.get(command.hold)


def _check_allowed(state: AccountState, command: AccountCommand) -> None:
    """Money is an administrator's business; a project may name its own provider keys."""
    actor = command.actor
    if isinstance(command, AddCredits | SetBudget) and actor.type != "adm":
        raise Rejected(
            "forbidden",
            f"only an administrator (actor type adm) may change {state.project}'s credits or "
            f"budget; {actor.type} {actor.id} may not",
        )
    if isinstance(command, SetByok) and actor.type != "adm" and actor.project != state.project:
        raise Rejected(
            "forbidden",
            f"only an administrator or an actor of project {state.project} may set its keys",
        )


def _check_own_hold(state: AccountState, command: ReserveCredits) -> None:
    """A create's hold is one per sandbox (``reserve-<sandbox_id>``), and it is the hold of the
    create that made it. Another create of the project naming the same sandbox id, decided
    while that one is between its hold and its append, found the hold decided and went on to
    append on it: the sandbox it made (its own TTL, profile and backend) ran on the other's
    hold, past what the account could pay and metered at the other's prices. The id is that
    create's now: the second is refused as for any taken id."""
    if command.reason != "create" or command.causation_id is None:
        return
    check_id_not_held(state, command.sandbox_id, command.causation_id)


def check_id_not_held(state: AccountState, sandbox_id: str, create_id: str) -> None:
    """Refuse (``sandbox_exists``) the create ``create_id`` of ``sandbox_id`` when the account
    holds credits for that id on another create's behalf: the id is that create's, whether
    this one reserves (:func:`_check_own_hold`) or not (a free backend, the project's own
    key), as a sandbox already appended would be (the same rejection)."""
    held = state.reservations.get(sandbox_id)
    if held is not None and held.created_by not in (None, create_id):
        raise Rejected(*taken_refusal(sandbox_id))


def _check_reservation(state: AccountState, command: ReserveCredits, now: str) -> None:
    held = state.reservations.get(command.sandbox_id)
    # A reroute gives back what the sandbox held on the backend that refused it.
    freed = held.amount if held is not None and command.reason == "reroute" else 0
    if command.amount <= freed:
        # A reroute that holds no more than it gives back (to a free or BYOK backend, or a
        # cheaper one) commits the account to nothing it had not taken on. Checked, it was
        # refused whenever spending had passed the budget or the balance had dipped (both
        # happen: a sandbox expired a sweep late is billed past its hold), and the sandbox
        # failed as unpaid for on a backend that costs nothing.
        return
    available = state.available + freed
    if command.amount > available:
        raise Rejected(
            "insufficient_credits",
            f"project {state.project} cannot pay for sandbox {command.sandbox_id} on "
            f"{command.extension}: need {command.amount}, have {max(available, 0)} "
            f"({state.reserved - freed} reserved; balance {state.balance}); "
            f"1 credit = 1 micro-USD. Add credits with 'sandboxer credits add {state.project} "
            "AMOUNT', or ask for a shorter --ttl",
        )
    if state.budget_limit is None:
        return
    key = period_key(now, state.budget_period)
    spent = state.spent.get(key, 0)
    committed = spent + state.reserved - freed + command.amount
    if committed > state.budget_limit:
        raise Rejected(
            "budget_exceeded",
            f"project {state.project}'s {'daily' if state.budget_period == 'day' else 'monthly'} "
            f"budget of "
            f"{format_credits(state.budget_limit)} would be exceeded: {key} spent {spent}, "
            f"reserved {state.reserved - freed}, this sandbox needs {command.amount} "
            f"(total {committed}). Raise it with 'sandboxer credits budget {state.project} "
            f"LIMIT --period {state.budget_period}', or wait for the next {state.budget_period}",
        )


SHORT_OF_CREDITS = frozenset({"insufficient_credits", "budget_exceeded"})
"""The refusals of a reservation that holds given back may lift."""


def hold_stranded(held: Reservation, sandbox: SandboxState, now: str) -> bool:
    """Whether ``held``, the reservation of ``sandbox``'s id, is a lost create's: made by a
    create (``created_by``) long ago, with nothing of the sandbox appended since and its id
    not given up (:func:`~sandboxer.domain.lost_creates.create_lost`). Its refusals give the
    id up and the hold back; one never delivered again held the project's credits for ever,
    its later creates refused for credits or budget. The caller gives the id up
    (``create_abandoned``) before it releases the hold, so a delivery still on its way is
    refused rather than appended on credits given back."""
    return held.created_by is not None and create_lost(sandbox, held.held_since, now)


def is_own_hold(
    held: Reservation, *, provider_key: str | None, created_by: str | None, extension: str | None
) -> bool:
    """Whether ``held`` was reserved for the sandbox as it ran: by the create that made it
    (another create naming its id, or one sent again that routed elsewhere after a crash
    between its hold and its append, held for something else) on the backend it ran on,
    with the operator's key (one its ``routed`` says the project's own key made was paid for
    by that key: a create held on the operator's key, cut off before its append and sent
    again once the project had set its own, was routed with the project's key). The meter
    takes its prices only from such a hold, and an extension likewise."""
    if provider_key not in (None, OPERATOR_KEY):
        return False
    if held.created_by is not None and created_by not in (None, held.created_by):
        return False
    return extension is None or held.extension == extension


def _metered(state: AccountState, command: MeterUsage, head: dict[str, Any]) -> UsageMetered:
    released = state.reservations.get(command.sandbox_id)
    own = released is not None and is_own_hold(
        released,
        provider_key=command.provider_key,
        created_by=command.created_by,
        extension=command.extension,
    )
    held = released if own else None
    byok = held is None and own_key_pays(command.provider_key, state.byok, command.extension)
    price = held.price if held is not None else command.price
    create_price = held.create_price if held is not None else command.create_price
    # Never usable (it failed before ready): nothing to pay, not even the create.
    amount = (
        0
        if byok or command.seconds == 0
        else ceil_microusd(Decimal(create_price) + Decimal(price) * Decimal(command.seconds))
    )
    return UsageMetered(
        **head,
        causation_id=command.causation_id,
        sandbox_id=command.sandbox_id,
        extension=command.extension,
        profile=command.profile,
        seconds=command.seconds,
        amount=amount,
        byok=byok,
        reserved_released=0 if released is None else released.amount,
        price="0" if byok else price,
    )
