"""The account aggregate's state, and ``evolve_account(state, event)``. Pure.

One account per project (``sandboxer.evt.account.<project>.>``). Money is an
``int`` of credits (1 credit = 1 micro-USD)::

    balance      credits added, minus credits debited by metering (may dip below zero
                 only when a sandbox used more than was reserved for it)
    reserved     the sum of the live reservations, one per sandbox not yet metered
    available    balance - reserved: what a new reservation may take
    spent        debited per UTC period key: "2026-12-02" (day) and "2026-12" (month)

A reservation is released whole when its sandbox is metered; what the
sandbox used is debited instead.

Deciding also needs the id of every command the account has decided, so
that none is decided twice: ``AccountBook`` is the state with those ids.
They are kept apart from the state because they grow by one for every
sandbox a project ever has (``reserve-…``, ``meter-…``), forever: the view's
row, which is written again at every change, carries only the figures, and
the ids are a persistent map, so adding one shares the rest instead of
copying it (a tuple copied per event made every fold quadratic: 20,000
events took 2.7 s).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import immutables
import msgspec

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
    "DEFAULT_PROJECT",
    "OPERATOR_KEY",
    "PROJECT_RULE",
    "AccountBook",
    "AccountState",
    "Reservation",
    "day_key",
    "evolve_account",
    "evolve_book",
    "evolve_working",
    "fold_book",
    "is_valid_project",
    "month_key",
    "own_key_pays",
    "period_key",
    "project_of",
    "reserve_command_id",
    "working_copy",
]


class Reservation(msgspec.Struct, frozen=True, kw_only=True):
    """Credits held for one sandbox, and the prices its usage will be metered at."""

    amount: int
    price: str
    """Micro-USD per second, a decimal string."""
    create_price: str = "0"
    extension: str
    profile: str | None = None
    created_by: str | None = None
    """The command id of the create it was reserved for (None: not recorded, before
    2026-12-04, or a hold a reroute made for a sandbox that had none). Another create naming
    the same sandbox id may not take it, and a sandbox some other create made is not
    metered at its prices."""
    held_since: str | None = None
    """When the create's hold was made (its ``credits_reserved``'s ``at``); None for a hold
    a reroute made for a sandbox that had none. One whose sandbox still has no events long
    after is a lost create's (:func:`~sandboxer.domain.account_decide.hold_stranded`)."""
    extensions: dict[str, int] = {}
    """The extensions' holds in ``amount``, by their command ids (``extend-<digest>``): one
    the sandbox refuses for good is given back alone (``credits_released``). A reroute's
    hold replaces them (it estimates the TTL as extended) but for those of extensions still
    in flight, which it carries over at its price (``CreditsReserved.carried``)."""


class AccountState(msgspec.Struct, frozen=True, kw_only=True):
    """What the log says about one project's account."""

    project: str
    version: int = 0
    """Number of events applied."""
    balance: int = 0
    added: int = 0
    """Every credit ever added."""
    debited: int = 0
    """Every credit ever debited."""
    reservations: dict[str, Reservation] = {}
    """Sandbox id -> its live reservation."""
    reserved: int = 0
    """The sum of ``reservations``."""
    spent: dict[str, int] = {}
    """Credits debited per period key (``YYYY-MM-DD`` and ``YYYY-MM``, UTC)."""
    budget_limit: int | None = None
    budget_period: Literal["day", "month"] = "month"
    byok: dict[str, str] = {}
    """Extension -> the secret reference of the project's own key there (never a value)."""
    metered: int = 0
    """Sandboxes metered."""
    updated_at: str | None = None

    @property
    def available(self) -> int:
        return self.balance - self.reserved


def day_key(at: str) -> str:
    return at[:10]


def month_key(at: str) -> str:
    return at[:7]


def period_key(at: str, period: Literal["day", "month"]) -> str:
    """The key of ``spent`` that the period containing ``at`` (UTC) is counted under."""
    return day_key(at) if period == "day" else month_key(at)


def evolve_account(state: AccountState, event: AccountEvent) -> AccountState:
    """The state after ``event``. Total: an event that does not apply leaves it as it is."""
    return _evolve(state, event, owned=False)


def _evolve(state: AccountState, event: AccountEvent, *, owned: bool) -> AccountState:
    """:func:`evolve_account`; ``owned``: ``state``'s reservations are a working copy no
    other state shares (:func:`fold_book`), changed in place rather than copied."""
    replace = msgspec.structs.replace
    base = replace(state, version=state.version + 1, updated_at=event.at)
    match event:
        case CreditsAdded():
            return replace(
                base, balance=base.balance + event.amount, added=base.added + event.amount
            )
        case CreditsReserved():
            return _reserve(base, event, owned)
        case CreditsReleased():
            return _release(base, event, owned)
        case UsageMetered():
            return _meter(base, event, owned)
        case BudgetSet():
            return replace(base, budget_limit=event.limit, budget_period=event.period)
        case ByokSet():
            byok = {k: v for k, v in base.byok.items() if k != event.extension}
            if event.key_ref is not None:
                byok[event.extension] = event.key_ref
            return replace(base, byok=dict(sorted(byok.items())))
    return base


def _reserve(base: AccountState, event: CreditsReserved, owned: bool) -> AccountState:
    held = base.reservations.get(event.sandbox_id)
    # A reroute replaces the sandbox's reservation (another backend, other prices); a create
    # or an extension adds to it.
    kept = 0 if held is None or event.reason == "reroute" else held.amount
    reservation = Reservation(
        amount=kept + event.amount,
        price=event.price,
        create_price=event.create_price,
        extension=event.extension,
        profile=event.profile if event.profile is not None or held is None else held.profile,
        # A create's hold names that create; an extension or a reroute keeps what it names.
        created_by=event.causation_id
        if event.reason == "create"
        else (None if held is None else held.created_by),
        held_since=event.at
        if event.reason == "create"
        else (None if held is None else held.held_since),
        extensions=_extensions_after(held, event),
    )
    return _with_reservation(base, event.sandbox_id, reservation, owned)


def _extensions_after(held: Reservation | None, event: CreditsReserved) -> dict[str, int]:
    if event.reason == "reroute":
        return dict(event.carried)  # its estimate covers the extensions appended
    if held is None:
        kept: dict[str, int] = {}
    else:
        kept = held.extensions
    if event.reason != "extend":
        return kept
    return {**kept, event.command_id: event.amount}


def reserve_command_id(sandbox_id: str) -> str:
    """The id of a create's reservation: one per sandbox, whichever create command asks."""
    return f"reserve-{sandbox_id}"


def _release(base: AccountState, event: CreditsReleased, owned: bool) -> AccountState:
    held = base.reservations.get(event.sandbox_id)
    if held is not None and event.hold == reserve_command_id(event.sandbox_id):
        # A create's hold, given back whole: its sandbox id was given up before anything of
        # it was appended (``create_abandoned``), so nothing else is held for the id.
        return _without_reservation(base, event.sandbox_id, owned)
    if held is None or event.hold not in held.extensions:
        return base  # metered or rerouted since: nothing of that hold is left to give back
    extensions = {k: v for k, v in held.extensions.items() if k != event.hold}
    reservation = msgspec.structs.replace(
        held, amount=max(held.amount - event.amount, 0), extensions=extensions
    )
    return _with_reservation(base, event.sandbox_id, reservation, owned)


# ``reserved`` moves by what each event adds or takes away, and the reservations are copied
# in C, never walked in Python: summing and filtering them at every event made a reserve or
# a meter cost 150 µs with 5,000 sandboxes live, so a load's fold grew with the account's
# history times its live count. A load copies them once (:func:`fold_book`).


def _with_reservation(
    base: AccountState, sandbox_id: str, reservation: Reservation, owned: bool
) -> AccountState:
    reservations = base.reservations if owned else dict(base.reservations)
    held = reservations.get(sandbox_id)
    reservations[sandbox_id] = reservation
    return msgspec.structs.replace(
        base,
        reservations=reservations,
        reserved=base.reserved - (0 if held is None else held.amount) + reservation.amount,
    )


def _without_reservation(base: AccountState, sandbox_id: str, owned: bool) -> AccountState:
    """``base`` with nothing held for ``sandbox_id`` any more."""
    if sandbox_id not in base.reservations:
        return base
    reservations = base.reservations if owned else dict(base.reservations)
    held = reservations.pop(sandbox_id)
    return msgspec.structs.replace(
        base, reservations=reservations, reserved=base.reserved - held.amount
    )


def _meter(base: AccountState, event: UsageMetered, owned: bool) -> AccountState:
    spent = base.spent
    if event.amount:
        spent = dict(spent)
        keys = (day_key(event.at), month_key(event.at))
        new_key = any(key not in spent for key in keys)
        for key in keys:
            spent[key] = spent.get(key, 0) + event.amount
        if new_key:  # kept in key order, so a state encodes the same whatever its history
            spent = dict(sorted(spent.items()))
    released = _without_reservation(base, event.sandbox_id, owned)
    return msgspec.structs.replace(
        released,
        balance=base.balance - event.amount,
        debited=base.debited + event.amount,
        spent=spent,
        metered=base.metered + 1,
    )


_NONE_HANDLED: immutables.Map[str, None] = immutables.Map()
"""Shared by every new book: a map never changes, ``set`` makes another."""


@dataclass(frozen=True, slots=True)
class AccountBook:
    """An account as deciding sees it: its state, and the ids of the commands already
    decided (client commands and the derived ``reserve-…``, ``extend-…`` and ``meter-…``)."""

    state: AccountState
    handled: immutables.Map[str, None] = _NONE_HANDLED

    @classmethod
    def empty(cls, project: str) -> AccountBook:
        return cls(AccountState(project=project))

    @property
    def version(self) -> int:
        return self.state.version


def evolve_book(book: AccountBook, event: AccountEvent) -> AccountBook:
    """The book after ``event``: its state evolved, and its command id remembered."""
    return AccountBook(evolve_account(book.state, event), book.handled.set(event.command_id, None))


def fold_book(book: AccountBook, events: Sequence[AccountEvent]) -> AccountBook:
    """The book after ``events``, in order: what folding :func:`evolve_book` gives.

    A load folds a whole history. Each ``evolve_book`` copies the reservations, which grow
    with the sandboxes live at once, so a project with thousands live paid that at every
    event; here one working copy is changed in place (no state in between is seen), and the
    ids are added to the map in one mutation."""
    state = working_copy(book.state)
    handled = book.handled.mutate()
    for event in events:
        state = evolve_working(state, event)
        handled[event.command_id] = None
    return AccountBook(state, handled.finish())


def working_copy(state: AccountState) -> AccountState:
    """``state`` with reservations of its own, for :func:`evolve_working` to change."""
    return msgspec.structs.replace(state, reservations=dict(state.reservations))


def evolve_working(state: AccountState, event: AccountEvent) -> AccountState:
    """:func:`evolve_account` on a working copy (:func:`working_copy`, or what this returned):
    its reservations are changed in place, not copied, so no state it came from may be read
    after. Folding many events, where the states in between are never read, copies the
    reservations once instead of at every event (they grow with the sandboxes live)."""
    return _evolve(state, event, owned=True)


PROJECT_RULE = "lowercase letters, digits, '-' and '_', starting with a letter or digit, 1 to 63"
_PROJECT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
DEFAULT_PROJECT = "default"
"""The account of sandboxes whose actor names no project."""


def is_valid_project(value: object) -> bool:
    """A project name is a subject token (``sandboxer.evt.account.<project>.>``): nothing else."""
    return isinstance(value, str) and _PROJECT.fullmatch(value) is not None


def project_of(actor: Actor | None) -> str:
    """The account an actor's work is paid from: its project, or ``default``."""
    return actor.project if actor is not None and actor.project else DEFAULT_PROJECT


OPERATOR_KEY = "operator"
"""A sandbox's ``provider_key`` when the backend's own key is used, and credits pay."""


def own_key_pays(provider_key: str | None, byok: dict[str, str], extension: str | None) -> bool:
    """Whether the project's own key pays for a sandbox on ``extension``: as its ``routed``
    recorded it, for the sandbox's whole life (a key set or removed since changes nothing);
    for a sandbox routed before that was recorded, as the account says now (``byok``)."""
    if provider_key is not None:
        return provider_key != OPERATOR_KEY
    return extension is not None and extension in byok
