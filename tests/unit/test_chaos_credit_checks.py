"""The fault suite's money checks count every credit movement: ``no_double_debit``
(chaos/checks.py) and the credits-redelivery scenario's ledger. A hold given back before any
metering (``credits_released``: an extension refused for good, or a create's whole hold once
its id was given up) is a movement too. Fed with events as the log would hold them."""

from __future__ import annotations

from typing import Any

from chaos.checks import LogView, double_debits
from chaos.scenarios.credits_redelivery import PROJECT, _ledger
from sandboxer.events.account_events import (
    CreditsAdded,
    CreditsReleased,
    CreditsReserved,
    UsageMetered,
)
from sandboxer.events.actor import SYSTEM_ACTOR
from sandboxer.events.codec import encode_event

AT = "2026-12-04T00:00:00.000Z"


class Log:
    def __init__(self) -> None:
        self.view = LogView()
        self.seq = 0

    def add(self, event: Any) -> None:
        self.seq += 1
        subject = f"sandboxer.evt.account.{PROJECT}.{event.__struct_config__.tag}"
        self.view._take(self.seq, subject, encode_event(event))

    def reserved(self, sandbox_id: str, command_id: str, amount: int, reason: str) -> None:
        self.add(
            CreditsReserved(
                project=PROJECT,
                command_id=command_id,
                actor=SYSTEM_ACTOR,
                at=AT,
                sandbox_id=sandbox_id,
                amount=amount,
                price="100",
                extension="ext.saas-stub",
                reason=reason,  # type: ignore[arg-type]
            )
        )

    def released(self, sandbox_id: str, hold: str, amount: int) -> None:
        self.add(
            CreditsReleased(
                project=PROJECT,
                command_id=f"release-{hold}",
                actor=SYSTEM_ACTOR,
                at=AT,
                sandbox_id=sandbox_id,
                hold=hold,
                amount=amount,
                reason="ttl_max_exceeded",
            )
        )


def funded(amount: int = 1_000_000) -> Log:
    log = Log()
    log.add(
        CreditsAdded(project=PROJECT, command_id="fund", actor=SYSTEM_ACTOR, at=AT, amount=amount)
    )
    return log


def test_a_create_s_hold_given_back_whole_leaves_nothing_reserved() -> None:
    """A create cut off after its hold and refused when sent again gives the hold back
    (``release-reserve-<id>``): the ledger called it still reserved, and the account's view
    (reserved 0) wrong."""
    log = funded()
    log.reserved("givenup01", "reserve-givenup01", 61_000, "create")
    log.released("givenup01", "reserve-givenup01", 61_000)
    totals, problems = _ledger(log.view, {"givenup01"})
    assert (totals["reserved"], problems) == (0, [])


def test_an_extension_s_hold_given_back_is_not_counted_at_the_metering() -> None:
    """An extension refused for good gives its hold back; the metering then releases the
    rest: the ledger said the metering released too little."""
    log = funded()
    log.reserved("sbx1", "reserve-sbx1", 61_000, "create")
    log.reserved("sbx1", "extend-1", 30_000, "extend")
    log.released("sbx1", "extend-1", 30_000)
    log.add(
        UsageMetered(
            project=PROJECT,
            command_id="meter-sbx1",
            actor=SYSTEM_ACTOR,
            at=AT,
            sandbox_id="sbx1",
            extension="ext.saas-stub",
            profile=None,
            seconds=3,
            amount=1_300,
            reserved_released=61_000,
        )
    )
    totals, problems = _ledger(log.view, {"sbx1"})
    assert (totals["reserved"], totals["balance"], problems) == (0, 1_000_000 - 1_300, [])


def test_a_hold_given_back_twice_is_a_double_movement() -> None:
    """``no_double_debit`` counted added, reserved and metered credits only: a release
    recorded twice under its one command id went unseen."""
    log = funded()
    log.reserved("givenup01", "reserve-givenup01", 61_000, "create")
    log.released("givenup01", "reserve-givenup01", 61_000)
    assert double_debits(log.view) == []
    log.released("givenup01", "reserve-givenup01", 61_000)
    assert double_debits(log.view) == [
        f"project {PROJECT}: credits_released recorded 2 times for command "
        "release-reserve-givenup01"
    ]
