"""The account aggregate's rules, pure: credits, reservations, metering, budgets, BYOK."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
from functools import reduce
from typing import Literal

import immutables
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandboxer.commands.parse import parse_command
from sandboxer.commands.types import AddCredits, SetBudget, SetByok
from sandboxer.domain.account_decide import (
    AccountCommand,
    MeterUsage,
    ReleaseHold,
    ReserveCredits,
    decide_account,
    hold_stranded,
    meter_command_id,
    release_command_id,
    reserve_command_id,
)
from sandboxer.domain.account_state import AccountBook, evolve_book, fold_book, project_of
from sandboxer.domain.lost_creates import STRANDED_SECONDS
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.domain.timestamps import shift
from sandboxer.errors import InvalidCommand, Rejected
from sandboxer.events.account_events import AccountEvent, UsageMetered
from sandboxer.events.codec import decode_event, encode_event
from sandboxer.events.types import Actor

ADM = Actor(type="adm", id="ops")
AGENT = Actor(type="agt", id="agent-7", project="acme")
NOW = "2026-12-02T10:00:00.000Z"


def run(book: AccountBook, command: AccountCommand, now: str = NOW) -> AccountBook:
    for event in decide_account(book, command, now):
        # Every event survives the wire as it is.
        assert decode_event(encode_event(event)) == event
        book = evolve_book(book, event)
    return book


def add(amount: int, command_id: str = "add-1") -> AddCredits:
    return AddCredits(command_id=command_id, actor=ADM, project="acme", amount=amount)


def reserve(
    sandbox_id: str,
    amount: int,
    *,
    price: str = "100",
    reason: Literal["create", "extend", "reroute"] = "create",
    command_id: str | None = None,
) -> ReserveCredits:
    return ReserveCredits(
        command_id=command_id or reserve_command_id(sandbox_id),
        actor=AGENT,
        sandbox_id=sandbox_id,
        amount=amount,
        price=price,
        create_price="1000",
        extension="ext.saas-stub",
        profile="profile.saas-stub",
        reason=reason,
    )


def meter(sandbox_id: str, seconds: int, extension: str = "ext.saas-stub") -> MeterUsage:
    return MeterUsage(
        command_id=meter_command_id(sandbox_id),
        actor=AGENT,
        sandbox_id=sandbox_id,
        extension=extension,
        profile="profile.saas-stub",
        seconds=seconds,
    )


def funded(amount: int = 1_000_000) -> AccountBook:
    return run(AccountBook.empty("acme"), add(amount))


def test_credits_are_added_once_per_command() -> None:
    book = funded(500)
    assert book.state.balance == 500
    assert run(book, add(500)) == book  # the same command again: nothing


def test_a_reservation_holds_credits_and_the_meter_debits_and_releases() -> None:
    book = run(funded(), reserve("sbx00000001", 181_000))
    assert (book.state.balance, book.state.reserved, book.state.available) == (
        1_000_000,
        181_000,
        819_000,
    )
    book = run(book, meter("sbx00000001", 600))
    # 1000 for the create plus 100 per second for 600 seconds
    assert (book.state.balance, book.state.reserved, book.state.debited) == (
        1_000_000 - 61_000,
        0,
        61_000,
    )
    assert book.state.spent == {"2026-12": 61_000, "2026-12-02": 61_000}
    assert book.state.reservations == {}


def test_metering_twice_debits_once() -> None:
    book = run(run(funded(), reserve("sbx00000001", 181_000)), meter("sbx00000001", 10))
    assert decide_account(book, meter("sbx00000001", 10), NOW) == []
    assert decide_account(book, meter("sbx00000001", 99), NOW) == []  # same sandbox, same id


def test_insufficient_credits_say_need_and_have() -> None:
    book = run(funded(200_000), reserve("sbx00000001", 150_000))
    with pytest.raises(Rejected) as refused:
        run(book, reserve("sbx00000002", 60_000))
    assert refused.value.code == "insufficient_credits"
    assert "need 60000, have 50000 (150000 reserved" in refused.value.reason


def test_an_extension_adds_to_the_reservation() -> None:
    book = run(funded(), reserve("sbx00000001", 100_000))
    book = run(book, reserve("sbx00000001", 50_000, reason="extend", command_id="extend-e1"))
    assert book.state.reservations["sbx00000001"].amount == 150_000
    assert book.state.reserved == 150_000
    with pytest.raises(Rejected, match="need 900000"):
        run(book, reserve("sbx00000001", 900_000, reason="extend", command_id="extend-e2"))


def test_a_reroute_replaces_the_reservation_and_its_price() -> None:
    book = run(funded(300_000), reserve("sbx00000001", 200_000))
    # The freed 200000 counts toward the new backend's reservation.
    book = run(
        book,
        reserve("sbx00000001", 250_000, price="120", reason="reroute", command_id="reroute-r1"),
    )
    held = book.state.reservations["sbx00000001"]
    assert (held.amount, held.price, book.state.reserved) == (250_000, "120", 250_000)


def test_a_budget_refuses_what_would_pass_it_and_names_it() -> None:
    book = run(
        funded(),
        SetBudget(command_id="b1", actor=ADM, project="acme", limit=100_000, period="day"),
    )
    book = run(book, reserve("sbx00000001", 60_000))
    book = run(book, meter("sbx00000001", 100))  # debits 11000, releases 60000
    with pytest.raises(Rejected) as refused:
        run(book, reserve("sbx00000002", 90_000))
    assert refused.value.code == "budget_exceeded"
    assert "daily budget" in refused.value.reason
    assert "2026-12-02 spent 11000" in refused.value.reason
    # A new day starts with nothing spent.
    assert run(book, reserve("sbx00000002", 89_000), now="2026-12-03T00:00:00.000Z")


def test_byok_meters_usage_but_debits_nothing() -> None:
    book = run(
        funded(),
        SetByok(
            command_id="k1", actor=AGENT, project="acme", extension="ext.e2b", key_ref="env:MY_KEY"
        ),
    )
    assert book.state.byok == {"ext.e2b": "env:MY_KEY"}
    (metered,) = decide_account(book, meter("sbx00000001", 500, "ext.e2b"), NOW)
    assert isinstance(metered, UsageMetered)
    assert (metered.byok, metered.amount, metered.seconds) == (True, 0, 500)


def test_a_sandbox_never_ready_costs_nothing_and_releases_its_reservation() -> None:
    book = run(run(funded(), reserve("sbx00000001", 181_000)), meter("sbx00000001", 0))
    assert (book.state.balance, book.state.reserved, book.state.metered) == (1_000_000, 0, 1)


def test_money_is_an_administrators_business() -> None:
    with pytest.raises(Rejected, match="administrator"):
        run(
            AccountBook.empty("acme"),
            AddCredits(command_id="x", actor=AGENT, project="acme", amount=5),
        )
    other = Actor(type="agt", id="a", project="other")
    with pytest.raises(Rejected, match="administrator or an actor of project acme"):
        run(
            AccountBook.empty("acme"),
            SetByok(command_id="k", actor=other, project="acme", extension="ext.e2b", key_ref=None),
        )


def test_the_project_of_an_actor_defaults() -> None:
    assert project_of(AGENT) == "acme"
    assert project_of(ADM) == "default"
    assert project_of(None) == "default"


@pytest.mark.parametrize(
    ("verb", "fields", "code"),
    [
        ("add_credits", {"project": "acme", "amount": 0}, "invalid_amount"),
        ("add_credits", {"project": "acme", "amount": -5}, "invalid_amount"),
        ("add_credits", {"project": "acme", "amount": 1.5}, "invalid_field"),
        ("add_credits", {"project": "acme", "amount": True}, "invalid_field"),
        ("add_credits", {"project": "acme", "amount": 10**13}, "invalid_amount"),
        ("add_credits", {"project": "Acme Corp", "amount": 5}, "invalid_project"),
        ("add_credits", {"project": "a.>", "amount": 5}, "invalid_project"),
        ("add_credits", {"project": "acme", "amount": 5, "usd": 1}, "invalid_field"),
        ("set_budget", {"project": "acme", "limit": -1}, "invalid_amount"),
        ("set_budget", {"project": "acme", "limit": 5, "period": "week"}, "invalid_field"),
        (
            "set_byok",
            {"project": "acme", "extension": "ext.e2b", "key_ref": "sk-live-1"},
            "invalid_field",
        ),
        ("set_byok", {"project": "acme", "extension": "e2b", "key_ref": None}, "invalid_field"),
    ],
)
def test_hostile_account_commands_are_refused(
    verb: str, fields: dict[str, object], code: str
) -> None:
    body = {"command_id": "c1", "actor": {"type": "adm", "id": "ops"}, **fields}
    with pytest.raises(InvalidCommand) as refused:
        parse_command(f"sandboxer.cmd.{verb}", msgspec.json.encode(body))
    assert refused.value.code == code


def test_an_actor_project_must_be_a_project_name() -> None:
    body = {
        "command_id": "c1",
        "actor": {"type": "agt", "id": "a", "project": "x.*"},
        "profile": "p",
    }
    with pytest.raises(InvalidCommand) as refused:
        parse_command("sandboxer.cmd.create", msgspec.json.encode(body))
    assert refused.value.code == "invalid_project"


def test_account_commands_parse() -> None:
    body = {
        "command_id": "c1",
        "actor": {"type": "adm", "id": "ops"},
        "project": "acme",
        "amount": 7,
    }
    assert parse_command("sandboxer.cmd.add_credits", msgspec.json.encode(body)) == AddCredits(
        command_id="c1", actor=Actor(type="adm", id="ops"), project="acme", amount=7
    )


operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(1, 10**6), st.integers(0, 5)),
        st.tuples(st.just("reserve"), st.integers(0, 2 * 10**6), st.integers(0, 5)),
        st.tuples(st.just("extend"), st.integers(0, 10**6), st.integers(0, 5)),
        st.tuples(st.just("meter"), st.integers(0, 10**4), st.integers(0, 5)),
        st.tuples(st.just("reroute"), st.integers(0, 10**6), st.integers(0, 5)),
        st.tuples(st.just("release"), st.integers(0, 40), st.integers(0, 5)),
    ),
    max_size=40,
)


def commands_of(ops: list[tuple[str, int, int]]) -> list[AccountCommand]:
    commands: list[AccountCommand] = []
    for n, (kind, amount, sandbox) in enumerate(ops):
        sandbox_id = f"sbx0000000{sandbox}"
        if kind == "add":
            commands.append(add(amount, command_id=f"add-{n}"))
        elif kind == "reserve":
            commands.append(reserve(sandbox_id, amount))
        elif kind == "extend":
            commands.append(reserve(sandbox_id, amount, reason="extend", command_id=f"extend-{n}"))
        elif kind == "reroute":
            commands.append(
                reserve(sandbox_id, amount, reason="reroute", command_id=f"reroute-{n}")
            )
        elif kind == "release":  # a create's whole hold, or one extension's (by its op)
            hold = reserve_command_id(sandbox_id) if amount % 2 else f"extend-{amount}"
            commands.append(release(hold, sandbox_id))
        else:
            commands.append(meter(sandbox_id, amount))
    return commands


def replay(commands: list[AccountCommand], *, never_short: bool = False) -> AccountBook:
    book = AccountBook.empty("acme")
    for command in commands:
        with contextlib.suppress(Rejected):
            book = run(book, command)
        assert book.state.reserved == sum(r.amount for r in book.state.reservations.values())
        if never_short:  # reservations never take more than there is
            assert 0 <= book.state.reserved <= book.state.balance
    return book


def decided_events(ops: list[tuple[str, int, int]]) -> list[AccountEvent]:
    events: list[AccountEvent] = []
    book = AccountBook.empty("acme")
    for command in commands_of(ops):
        with contextlib.suppress(Rejected):
            decided = decide_account(book, command, NOW)
            for event in decided:
                book = evolve_book(book, event)
            events += decided
    return events


@settings(max_examples=200, deadline=None)
@given(operations)
def test_reservations_never_take_the_balance_below_zero(ops: list[tuple[str, int, int]]) -> None:
    replay([c for c in commands_of(ops) if not isinstance(c, MeterUsage)], never_short=True)


@settings(max_examples=200, deadline=None)
@given(operations)
def test_every_command_delivered_twice_changes_nothing(ops: list[tuple[str, int, int]]) -> None:
    """Redelivered or re-sent commands (each right after itself, or all again at the end once
    they were decided) reserve, add and debit nothing more."""
    commands = commands_of(ops)
    once = replay(commands)
    doubled = replay([c for command in commands for c in (command, command)])
    assert doubled == once
    decided = [c for c in commands if c.command_id in once.handled]
    assert replay(commands + decided) == once


@settings(max_examples=200, deadline=None)
@given(operations, st.integers(0, 40))
def test_a_load_s_fold_equals_folding_event_by_event(
    ops: list[tuple[str, int, int]], split: int
) -> None:
    """A load folds a history with one working copy of the reservations (``fold_book``);
    it gives what ``evolve_book`` gives event by event, from any book, and leaves the book
    it started from as it was."""
    events = decided_events(ops)
    book = reduce(evolve_book, events, AccountBook.empty("acme"))
    start = reduce(evolve_book, events[:split], AccountBook.empty("acme"))
    before = copy.deepcopy(start.state)
    assert fold_book(start, events[split:]) == book
    assert start.state == before


def test_a_book_is_never_changed_by_what_is_folded_after_it() -> None:
    """The store decides again from an earlier book when an append conflicts: folding on
    from a book must leave it, and every other branch from it, as it was."""
    book = run(funded(), reserve("sbx00000001", 100))
    one = run(book, meter("sbx00000001", 1))
    other = run(book, reserve("sbx00000002", 100))
    assert reserve_command_id("sbx00000001") in book.handled
    assert meter_command_id("sbx00000001") not in book.handled
    assert meter_command_id("sbx00000001") not in other.handled
    assert reserve_command_id("sbx00000002") not in one.handled
    assert run(book, meter("sbx00000001", 1)) == one


def test_nothing_is_reserved_for_a_sandbox_already_metered() -> None:
    """An extension (or a reroute) decided before the destroy, whose reservation comes after
    the metering (its worker held up past the ack wait): held, it would never be released."""
    book = run(run(funded(), reserve("sbx00000001", 181_000)), meter("sbx00000001", 5))
    with pytest.raises(Rejected) as refused:
        run(book, reserve("sbx00000001", 5_000, reason="extend", command_id="extend-e1"))
    assert refused.value.code == "already_destroyed"
    assert book.state.reserved == 0


def test_a_create_s_hold_is_not_another_create_s() -> None:
    """Two creates of one project name one sandbox id. The first holds 7000 (a minute);
    the second, decided before the first is appended, found ``reserve-<id>`` decided and
    went on to append on that hold: a sandbox of its own TTL on a minute's credits."""
    first = dataclasses.replace(reserve("sbx00000001", 7_000), causation_id="create-a")
    book = run(funded(7_000), first)
    assert book.state.reservations["sbx00000001"].created_by == "create-a"
    second = dataclasses.replace(first, amount=181_000, causation_id="create-b")
    with pytest.raises(Rejected) as refused:
        run(book, second)
    assert refused.value.code == "sandbox_exists"
    assert "sbx00000001 is taken" in refused.value.reason
    assert run(book, first) == book  # the same create again decides nothing, as before
    # An extension and a reroute keep the hold the create's.
    book = run(book, reserve("sbx00000001", 0, reason="extend", command_id="extend-e1"))
    book = run(book, reserve("sbx00000001", 500, reason="reroute", command_id="reserve-r1"))
    assert book.state.reservations["sbx00000001"].created_by == "create-a"
    with pytest.raises(Rejected, match="is taken"):
        run(book, second)


def test_a_sandbox_is_not_metered_at_a_hold_made_for_something_else() -> None:
    """The hold of another create of its id, or one made on another backend (a create sent
    again after a crash between its hold and its append, routed elsewhere), is released, and
    the sandbox metered at its own backend's prices."""
    held = dataclasses.replace(reserve("sbx00000001", 181_000), causation_id="create-a")
    book = run(funded(), held)

    def metered(**fields: object) -> UsageMetered:
        command = dataclasses.replace(
            meter("sbx00000001", 10), price="1", create_price="0", **fields
        )
        (event,) = decide_account(book, command, NOW)
        assert isinstance(event, UsageMetered)
        return event

    ours = metered(created_by="create-a")
    assert (ours.amount, ours.price, ours.reserved_released) == (2_000, "100", 181_000)
    assert metered(created_by=None).amount == 2_000  # not known: the hold is taken as its
    for other in (metered(created_by="create-b"), metered(extension="ext.local")):
        assert (other.amount, other.price, other.reserved_released) == (10, "1", 181_000)
    left = run(book, dataclasses.replace(meter("sbx00000001", 10), created_by="create-b"))
    assert (left.state.reserved, left.state.balance) == (0, 1_000_000)


def test_a_reroute_holding_no_more_than_it_frees_is_never_refused() -> None:
    """Spending past the budget, or a balance below the other holds (a sandbox billed past
    its hold: expired a sweep late), refused a reroute to a free backend (a hold of 0)."""
    book = run(funded(10_000), reserve("sbx00000001", 2_000))
    book = run(book, reserve("sbx00000002", 4_000))
    book = run(book, reserve("sbx00000003", 4_000))
    book = run(book, meter("sbx00000001", 60))  # 1000 + 60 s at 100: 7000, past its hold
    assert (book.state.balance, book.state.reserved) == (3_000, 8_000)

    def reroute(book: AccountBook, amount: int) -> AccountBook:
        return run(book, reserve("sbx00000002", amount, reason="reroute", command_id="r-1"))

    budgeted = run(
        book, SetBudget(command_id="b1", actor=ADM, project="acme", limit=5_000, period="day")
    )
    for start in (book, budgeted):  # balance below the others' holds; spent past the budget
        for amount in (0, 4_000):  # to a free backend; to one as dear
            assert reroute(start, amount).state.reserved == 4_000 + amount
        with pytest.raises(Rejected):  # one that holds more is checked as before
            reroute(start, 4_001)


def test_a_sandbox_its_project_s_key_made_is_not_charged_a_hold() -> None:
    """Held on the operator's key, cut off before its append, sent again once the project
    had set its own key: routed with the project's key, it was metered at the hold."""
    book = run(funded(), reserve("sbx00000001", 181_000))
    command = dataclasses.replace(meter("sbx00000001", 10), provider_key="env:SANDBOXER_BYOK_A")
    (own,) = decide_account(book, command, NOW)
    assert isinstance(own, UsageMetered)
    assert (own.byok, own.amount, own.price, own.reserved_released) == (True, 0, "0", 181_000)
    operator = dataclasses.replace(command, provider_key="operator")
    (paid,) = decide_account(book, operator, NOW)
    assert isinstance(paid, UsageMetered)
    assert (paid.byok, paid.amount) == (False, 2_000)


def release(hold: str, sandbox_id: str = "sbx00000001") -> ReleaseHold:
    return ReleaseHold(
        command_id=release_command_id(hold),
        actor=AGENT,
        sandbox_id=sandbox_id,
        hold=hold,
        reason="ttl_max_exceeded",
    )


def test_an_extension_refused_for_good_gives_its_hold_back_once_and_alone() -> None:
    """An extension held before its sandbox refused it (past ttl.max): its hold, and only
    its, is free again at once, not when the sandbox is metered; given back once."""
    book = run(funded(), reserve("sbx00000001", 7_000))
    book = run(book, reserve("sbx00000001", 6_000, reason="extend", command_id="extend-e1"))
    book = run(book, reserve("sbx00000001", 36_000, reason="extend", command_id="extend-e2"))
    assert book.state.reserved == 49_000
    book = run(book, release("extend-e2"))
    held = book.state.reservations["sbx00000001"]
    assert (book.state.reserved, held.amount, held.extensions) == (
        13_000,
        13_000,
        {"extend-e1": 6_000},
    )
    assert run(book, release("extend-e2")) == book  # delivered again: nothing
    assert run(book, release("extend-e9")) == book  # never held: nothing
    metered = run(book, meter("sbx00000001", 10))
    assert metered.state.reserved == 0
    [event] = [
        e
        for e in decide_account(book, meter("sbx00000001", 10), NOW)
        if isinstance(e, UsageMetered)
    ]
    assert event.reserved_released == 13_000


def test_nothing_is_given_back_of_a_hold_a_reroute_or_the_metering_replaced() -> None:
    """A reroute's hold replaces the extensions' (it estimates the TTL as extended, which an
    extension never appended is not part of); the metering releases every hold."""
    book = run(funded(), reserve("sbx00000001", 7_000))
    book = run(book, reserve("sbx00000001", 6_000, reason="extend", command_id="extend-e1"))
    rerouted = run(book, reserve("sbx00000001", 9_000, reason="reroute", command_id="reserve-r1"))
    assert rerouted.state.reservations["sbx00000001"].extensions == {}
    assert run(rerouted, release("extend-e1")) == rerouted
    metered = run(book, meter("sbx00000001", 1))
    assert run(metered, release("extend-e1")) == metered


def release_create(sandbox_id: str, create_id: str) -> ReleaseHold:
    hold = reserve_command_id(sandbox_id)
    return ReleaseHold(
        command_id=release_command_id(hold),
        causation_id=create_id,
        actor=AGENT,
        sandbox_id=sandbox_id,
        hold=hold,
        reason="no_host",
    )


def test_a_create_s_hold_is_given_back_whole_once_and_only_by_its_create() -> None:
    """A create refused after its hold, whose id was given up (``create_abandoned``): its
    hold is free again, once; another create of the id gives back nothing of it, and a hold
    recorded without its create (before 2026-12-04) is not given back."""
    held = dataclasses.replace(reserve("sbx00000002", 5_000), causation_id="create-b")
    book = run(run(funded(), reserve_with_cause("sbx00000001", 7_000, "create-a")), held)
    assert book.state.reserved == 12_000
    assert run(book, release_create("sbx00000001", "create-x")) == book
    released = run(book, release_create("sbx00000001", "create-a"))
    assert released.state.reserved == 5_000
    assert "sbx00000001" not in released.state.reservations
    assert released.state.balance == book.state.balance  # nothing debited
    assert run(released, release_create("sbx00000001", "create-a")) == released
    unnamed = run(funded(), reserve("sbx00000001", 7_000))
    assert run(unnamed, release_create("sbx00000001", "create-a")) == unnamed


def reserve_with_cause(sandbox_id: str, amount: int, create_id: str) -> ReserveCredits:
    return dataclasses.replace(reserve(sandbox_id, amount), causation_id=create_id)


def test_a_reroute_carries_over_the_hold_of_an_extension_still_in_flight() -> None:
    """An extension held and not yet appended when the sandbox is rerouted: the reroute's
    estimate covers only the extensions appended, and its hold replaced every other, so
    the in-flight extension's time, appended after, was held nowhere. It is carried over at
    the new backend's price, and may still be given back alone; an appended one is in the
    estimate, and a free fallback carries nothing."""
    book = run(funded(), reserve("sbx00000001", 61_000))  # price 100 a second
    book = run(book, reserve("sbx00000001", 6_000, reason="extend", command_id="extend-e1"))
    book = run(book, reserve("sbx00000001", 36_000, reason="extend", command_id="extend-e2"))
    reroute = dataclasses.replace(
        reserve("sbx00000001", 70_000, price="50", reason="reroute", command_id="reserve-r1"),
        appended_extensions=frozenset({"extend-e1"}),  # e2 is in flight
    )
    rerouted = run(book, reroute)
    held = rerouted.state.reservations["sbx00000001"]
    assert held.extensions == {"extend-e2": 18_000}  # 360 s at 50 a second
    assert (held.amount, rerouted.state.reserved) == (88_000, 88_000)
    given_back = run(rerouted, release("extend-e2"))
    assert given_back.state.reserved == 70_000
    free = dataclasses.replace(reroute, amount=0, price="0", appended_extensions=None)
    assert run(book, free).state.reservations["sbx00000001"].extensions == {}
    assert run(book, free).state.reserved == 0


def test_a_create_s_hold_is_stranded_only_long_after_with_nothing_of_its_sandbox() -> None:
    """A hold records when its create made it, and keeps it through extensions; it is a lost
    create's once STRANDED_SECONDS passed with the sandbox still without events, its id not
    given up. A hold recorded without its create (before 2026-12-04) never is."""
    book = run(funded(), reserve_with_cause("sbx00000003", 5_000, "create-c"))
    book = run(book, reserve("sbx00000003", 600, reason="extend", command_id="extend-e1"))
    held = book.state.reservations["sbx00000003"]
    assert held.held_since == NOW
    new = SandboxState(sandbox_id="sbx00000003")
    late = shift(NOW, STRANDED_SECONDS + 1)
    assert not hold_stranded(held, new, shift(NOW, STRANDED_SECONDS - 1))
    assert hold_stranded(held, new, late)
    assert not hold_stranded(held, msgspec.structs.replace(new, status="requested"), late)
    assert not hold_stranded(held, msgspec.structs.replace(new, abandoned_by="create-c"), late)
    assert not hold_stranded(msgspec.structs.replace(held, created_by=None), new, late)
    assert not hold_stranded(msgspec.structs.replace(held, held_since=None), new, late)


@settings(max_examples=100, deadline=None)
@given(operations, st.integers(1, 10**6))
def test_a_checkpoint_reads_back_the_book_it_was_made_of(
    ops: list[tuple[str, int, int]], last_seq: int
) -> None:
    """An account's checkpoint (bus/account_checkpoint.py) gives back the same book, with
    every command id it had decided; it is read only for its own project and code."""
    from sandboxer.bus.account_checkpoint import decode_checkpoint, encode_checkpoint
    from sandboxer.bus.event_store import LoadedAccount

    loaded = LoadedAccount(replay(commands_of(ops)), last_seq)
    data = encode_checkpoint(loaded, "digest-of-the-last-message")
    found = decode_checkpoint(data, "acme")
    assert found is not None
    assert found.last_message == "digest-of-the-last-message"
    back = found.loaded(immutables.Map(dict.fromkeys(found.handled)))
    assert back == loaded
    assert back.book.handled == loaded.book.handled
    assert decode_checkpoint(data, "other") is None


def test_a_checkpoint_of_other_code_or_no_checkpoint_at_all_is_not_read() -> None:
    from sandboxer.bus.account_checkpoint import decode_checkpoint, encode_checkpoint, fingerprint
    from sandboxer.bus.event_store import LoadedAccount

    loaded = LoadedAccount(run(AccountBook.empty("acme"), add(5)), 7)
    good = msgspec.msgpack.decode(encode_checkpoint(loaded, "d"))
    assert good["fingerprint"] == fingerprint() != ""
    assert decode_checkpoint(msgspec.msgpack.encode(good), "acme") is not None
    for changed in ({"fingerprint": "0" * 64}, {"fingerprint": ""}, {"last_seq": 0}):
        assert decode_checkpoint(msgspec.msgpack.encode(good | changed), "acme") is None
    for garbage in (b"", b"\xc1", b"not msgpack", msgspec.msgpack.encode({"state": 1})):
        assert decode_checkpoint(garbage, "acme") is None


@settings(max_examples=200, deadline=None)
@given(operations, st.sets(st.integers(0, 40), max_size=6))
def test_the_view_s_account_rows_never_change_a_state_handed_over_to_be_written(
    ops: list[tuple[str, int, int]], takes: set[int]
) -> None:
    """The projector folds an account's events on one working copy of its reservations
    between two takes (projections/account_rows.py): each state handed over to be written
    is what ``evolve_account`` gives at that event, and stays so however much is folded
    after it, while it is written."""
    from sandboxer.domain.account_state import AccountState, evolve_account
    from sandboxer.projections.account_rows import AccountRows

    events = decided_events(ops)

    async def fold() -> None:
        rows = AccountRows()
        state = AccountState(project="acme")
        handed: list[tuple[AccountState, AccountState]] = []
        for n, event in enumerate(events):
            if n in takes:
                taken = rows.take().known.get("acme")
                if taken is not None:
                    handed.append((taken, copy.deepcopy(taken)))
            await rows.apply(event, n + 1, None)
            state = evolve_account(state, event)
            assert rows.known["acme"] == state
        for taken, as_it_was in handed:
            assert taken == as_it_was

    asyncio.run(fold())
