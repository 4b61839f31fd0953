"""The account aggregate's events (``sandboxer.evt.account.<project>.<type>``): credits,
reservations, metered usage, budgets and provider keys of one project.

Money is always an ``int`` of credits, 1 credit = 1 micro-USD (docs/payments.md); a price
per second, which may be a fraction of a credit, travels as a decimal string.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from sandboxer.events.actor import Actor

__all__ = [
    "ACCOUNT_EVENTS",
    "AccountEvent",
    "BudgetSet",
    "ByokSet",
    "CreditsAdded",
    "CreditsReleased",
    "CreditsReserved",
    "UsageMetered",
]


class _AccountEventBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    v: int = 1
    """Schema version of this event type; a type that changes shape redeclares it."""
    event_id: str = ""
    """Unique id, also the ``Nats-Msg-Id`` of the append; set by the event store."""
    project: str
    """The account: a project name (``^[a-z0-9][a-z0-9_-]{0,62}$``), ``default`` for none."""
    command_id: str
    """The command this records: a client's (``add_credits``...) or a derived one
    (``reserve-<sandbox_id>``, ``meter-<sandbox_id>``), so a retry records nothing twice."""
    causation_id: str | None = None
    """The command or event that caused it (the create, extend_ttl or destroy), if another."""
    actor: Actor
    at: str
    """UTC time, ISO 8601 with milliseconds."""


class CreditsAdded(_AccountEventBase, frozen=True, kw_only=True, tag="credits_added"):
    """``amount`` credits were added to the account's balance."""

    amount: int


class CreditsReserved(_AccountEventBase, frozen=True, kw_only=True, tag="credits_reserved"):
    """Credits held for a sandbox's estimated cost, before it is created (``create``), for the
    extra time of an ``extend_ttl`` (``extend``), or again on another backend after a reroute
    (``reroute``: replaces the sandbox's reservation and its prices). Released when the
    sandbox's usage is metered."""

    sandbox_id: str
    amount: int
    price: str
    """Micro-USD per second on the chosen backend, as a decimal string (``"100"``, ``"0.5"``)."""
    create_price: str = "0"
    """Micro-USD charged once per sandbox (the backend's ``per_create``), a decimal string."""
    extension: str
    profile: str | None = None
    reason: Literal["create", "extend", "reroute"] = "create"
    carried: dict[str, int] = {}
    """For a ``reroute``: the holds of extensions still in flight (held, not yet appended) it
    carries over, by their command ids (``extend-<digest>``), at the new backend's price;
    part of ``amount``. Empty (or absent, before 2026-12-04): none."""


class CreditsReleased(_AccountEventBase, frozen=True, kw_only=True, tag="credits_released"):
    """Part of a sandbox's reservation given back before the sandbox is metered: the hold
    made by the ``credits_reserved`` whose command id is ``hold``, for a command the sandbox
    refused for good (``reason``, the refusal's code: ``ttl_max_exceeded``, an extension
    that would keep it past its ``ttl.max``), or for a create refused before its sandbox was
    appended, whose id its ``create_abandoned`` gave up (``hold`` ``reserve-<sandbox_id>``:
    the whole reservation). Nothing is debited; the rest of the reservation stays until the
    sandbox is metered."""

    sandbox_id: str
    hold: str
    """The command id of the hold given back (``extend-<digest>``, ``reserve-<sandbox_id>``)."""
    amount: int
    """Credits free again."""
    reason: str


class UsageMetered(_AccountEventBase, frozen=True, kw_only=True, tag="usage_metered"):
    """A sandbox ended (``destroyed``): its billable seconds, the credits debited for them
    (0 on a free backend or with the project's own key), and its reservation released."""

    sandbox_id: str
    extension: str | None
    profile: str | None
    seconds: int
    """Billable seconds (ready to teardown, minus pauses), rounded up to a whole second."""
    amount: int
    """Credits debited: ``create_price + price * seconds`` rounded up; 0 for BYOK or free."""
    byok: bool = False
    reserved_released: int = 0
    """Credits that were held for the sandbox and are free again."""
    price: str = "0"
    """Micro-USD per second the amount was computed with."""


class BudgetSet(_AccountEventBase, frozen=True, kw_only=True, tag="budget_set"):
    """A spending limit for the project per UTC ``day`` or ``month`` (``limit`` None: none)."""

    limit: int | None
    period: Literal["day", "month"] = "month"


class ByokSet(_AccountEventBase, frozen=True, kw_only=True, tag="byok_set"):
    """The project brings its own key for ``extension``: a secret reference (``env:NAME``,
    ``file:PATH``), never a value; ``key_ref`` None removes it. Its sandboxes there reserve and
    debit nothing; their usage is still metered."""

    extension: str
    key_ref: str | None


AccountEvent = CreditsAdded | CreditsReserved | CreditsReleased | UsageMetered | BudgetSet | ByokSet
ACCOUNT_EVENTS = (CreditsAdded, CreditsReserved, CreditsReleased, UsageMetered, BudgetSet, ByokSet)
"""For ``isinstance``: the account aggregate's events."""
