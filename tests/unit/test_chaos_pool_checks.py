"""The fault suite's warm pool check (chaos/checks.py ``pool_claims_once``) finds what it is
meant to: a member serving two sandboxes, a claim without its ``ready``, a pool directory
that does not match the log. Fed with events as the log would hold them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chaos.checks import LogView, _claims_in_log, _pool_against_machine
from sandboxer.events.actor import SYSTEM_ACTOR
from sandboxer.events.codec import encode_event
from sandboxer.events.pool_events import (
    PoolMemberAdded,
    PoolMemberClaimed,
    PoolMemberReady,
    PoolMemberRemoved,
)
from sandboxer.events.sandbox_events import SandboxDestroyed, SandboxReady

AT = "2026-12-02T00:00:00.000Z"
PROFILE = "profile.warm"
M1, M2 = "pool00000000000000a1", "pool00000000000000a2"


class Log:
    def __init__(self) -> None:
        self.view = LogView()
        self.seq = 0

    def add(self, event: Any, subject: str) -> None:
        self.seq += 1
        self.view._take(self.seq, subject, encode_event(event))

    def member(
        self, member_id: str, *, claimed_by: tuple[str, ...] = (), claimed_at: str = AT
    ) -> None:
        common = {"member_id": member_id, "pool": "p", "command_id": "c", "actor": SYSTEM_ACTOR}
        subject = f"sandboxer.evt.pool.{member_id}"
        self.add(
            PoolMemberAdded(
                **common,
                at=AT,
                profile=PROFILE,
                profile_version=1,
                profile_digest="d",
                extension="ext.local",
                node="n",
                worker="w",
            ),
            f"{subject}.added",
        )
        self.add(PoolMemberReady(**common, at=AT), f"{subject}.ready")
        for sandbox_id in claimed_by:
            self.add(
                PoolMemberClaimed(**common, at=claimed_at, sandbox_id=sandbox_id),
                f"{subject}.claimed",
            )

    def removed(self, member_id: str) -> None:
        self.add(
            PoolMemberRemoved(
                member_id=member_id, pool="p", command_id="c", actor=SYSTEM_ACTOR, at=AT, reason="r"
            ),
            f"sandboxer.evt.pool.{member_id}.removed",
        )

    def ready(self, sandbox_id: str, member_id: str | None) -> None:
        self.add(
            SandboxReady(
                sandbox_id=sandbox_id,
                command_id="c",
                actor=SYSTEM_ACTOR,
                at=AT,
                reachability={},
                pool_member=member_id,
            ),
            f"sandboxer.evt.sandbox.{sandbox_id}.ready",
        )

    def destroyed(self, sandbox_id: str) -> None:
        self.add(
            SandboxDestroyed(sandbox_id=sandbox_id, command_id="c", actor=SYSTEM_ACTOR, at=AT),
            f"sandboxer.evt.sandbox.{sandbox_id}.destroyed",
        )


def test_one_claim_named_by_its_sandbox_is_clean() -> None:
    log = Log()
    log.member(M1, claimed_by=("sbxone",))
    log.ready("sbxone", M1)
    log.ready("sbxcold", None)
    assert _claims_in_log(log.view, members_may_die=False) == []


def test_a_member_serving_two_sandboxes_is_found() -> None:
    log = Log()
    log.member(M1, claimed_by=("sbxone",))
    log.ready("sbxone", M1)
    log.ready("sbxtwo", M1)
    problems = _claims_in_log(log.view, members_may_die=False)
    assert any("served 2 sandboxes" in p for p in problems)
    assert any(p.startswith("sbxtwo: its ready names member") for p in problems)


def test_a_member_claimed_twice_is_found() -> None:
    log = Log()
    log.member(M1, claimed_by=("sbxone", "sbxtwo"))
    log.ready("sbxtwo", M1)
    assert any("claimed 2 times" in p for p in _claims_in_log(log.view, members_may_die=False))


def test_a_claim_whose_sandbox_went_cold_or_names_another_member_is_found() -> None:
    log = Log()
    log.member(M1, claimed_by=("sbxone",))
    log.member(M2, claimed_by=("sbxtwo",))
    log.ready("sbxone", None)
    log.ready("sbxtwo", M1)
    problems = _claims_in_log(log.view, members_may_die=False)
    assert any("sbxone claimed member" in p and "made cold" in p for p in problems)
    assert any("sbxtwo claimed member" in p and "names ['pool" in p for p in problems)
    assert not any("made cold" in p for p in _claims_in_log(log.view, members_may_die=True))


def test_a_claim_whose_sandbox_ended_before_ready_is_over() -> None:
    log = Log()
    log.member(M1, claimed_by=("sbxone",))
    log.destroyed("sbxone")
    assert _claims_in_log(log.view, members_may_die=False) == []


def test_the_pool_directory_is_held_against_the_log(tmp_path: Path) -> None:
    log = Log()
    log.member(M1)
    log.removed(M1)
    log.member(M2)
    (tmp_path / ".pool" / M1).mkdir(parents=True)  # removed, yet still there
    problems = _pool_against_machine(log.view, tmp_path, {PROFILE: (2, 2)})
    assert f"member {M1}: removed in the log, its directory remains in .pool" in problems
    assert f"member {M2}: ready in the log, nothing in .pool" in problems
    assert any("1 ready members in the log, not within min_ready 2" in p for p in problems)


def test_a_claim_by_a_job_delivered_again_after_its_sandbox_was_ready_is_not_made_cold() -> None:
    """The claim goes beside `provisioning`; a second delivery's `provisioning` conflicts with
    a sandbox already made, so its claimed member serves no one (the keeper tears it down)."""
    log = Log()
    log.ready("sbxone", None)
    log.member(M1, claimed_by=("sbxone",), claimed_at="2026-12-02T00:00:05.000Z")
    assert _claims_in_log(log.view, members_may_die=False) == []
