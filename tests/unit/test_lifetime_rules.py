"""Lifetime commands as the wire brings them, and the lifetime rules under any sequence of
touches, extensions and expiries at any times: only rejections with reasons, and at most
one expiry per sandbox."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies

from sandboxer.commands.parse import InvalidCommand, parse_command
from sandboxer.commands.types import CreateSandbox, ExpireSandbox, ExtendTtl, TouchSandbox
from sandboxer.domain.deadlines import due
from sandboxer.domain.sandbox_decide import (
    AdmittedCreate,
    FinishTeardown,
    MarkReady,
    StartProvisioning,
    decide,
)
from sandboxer.domain.sandbox_state import SandboxState, evolve
from sandboxer.domain.timestamps import LATEST, shift
from sandboxer.errors import Rejected
from sandboxer.events.types import Actor, event_type
from sandboxer.workers.expirer import expire_command

ACTOR = {"type": "agt", "id": "agent-7"}
SID = "sandbox0001"
T0 = "2026-12-02T00:00:00.000Z"


def raw(**fields: object) -> bytes:
    return json.dumps(fields).encode()


@pytest.mark.parametrize(
    ("verb", "fields", "fragment"),
    [
        ("extend_ttl", {"sandbox_id": SID, "duration": "soon"}, "duration"),
        ("extend_ttl", {"sandbox_id": SID, "duration": "0s"}, "longer than zero"),
        ("extend_ttl", {"sandbox_id": SID, "duration": "-1h"}, "duration"),
        ("extend_ttl", {"sandbox_id": SID, "duration": "99999999999d"}, "longer than 3650d"),
        ("extend_ttl", {"sandbox_id": SID}, "duration"),
        ("create", {"profile": "p", "ttl": "1y"}, "ttl"),
        ("touch", {"sandbox_id": SID, "at": T0}, "at"),
        ("expire", {"sandbox_id": SID, "reason": "x" * 501}, "reason"),
        ("expire", {"sandbox_id": "../x"}, "lowercase"),
    ],
)
def test_bad_lifetime_commands_are_invalid_with_a_reason(
    verb: str, fields: dict[str, object], fragment: str
) -> None:
    with pytest.raises(InvalidCommand) as caught:
        parse_command(f"sandboxer.cmd.{verb}", raw(command_id="c", actor=ACTOR, **fields))
    assert fragment in caught.value.reason


def test_the_expirers_command_parses_and_names_the_version() -> None:
    sandbox = {"sandbox_id": SID, "version": 7, "due": {"at": T0, "cause": "idle"}}
    command = parse_command("sandboxer.cmd.expire", json.dumps(expire_command(sandbox)).encode())
    assert isinstance(command, ExpireSandbox)
    assert command.command_id == f"expire-{SID}-7"
    assert command.reason == f"idle deadline {T0} passed"


def test_date_arithmetic_saturates_instead_of_overflowing() -> None:
    assert shift(T0, 1e15) == LATEST


def ready(idle: float | None) -> SandboxState:
    state = SandboxState(sandbox_id=SID)
    create = AdmittedCreate(
        command=CreateSandbox(
            command_id="c0", actor=Actor(type="agt", id="a"), profile="profile.local"
        ),
        sandbox_id=SID,
        profile_version=1,
        inputs={},
        extension="ext.local",
        route_reason="fixed",
        ttl_seconds=100,
        ttl_max_seconds=300,
        idle_reap_seconds=idle,
    )
    for command in (
        create,
        StartProvisioning(job_id="j", worker="w"),
        MarkReady(job_id="j", reachability={}, warnings=[]),
    ):
        for event in decide(state, command, T0):
            state = evolve(state, event)
    return state


STEP = strategies.tuples(
    strategies.sampled_from(["touch", "extend", "expire", "adm-expire", "teardown"]),
    strategies.floats(min_value=0, max_value=50, allow_nan=False),
    strategies.sampled_from(["10s", "1m", "5m"]),
)


@settings(max_examples=300, deadline=None)
@given(
    idle=strategies.sampled_from([None, 20.0, 600.0]),
    steps=strategies.lists(STEP, max_size=25),
)
def test_any_lifetime_sequence_expires_at_most_once_and_never_early(
    idle: float | None, steps: list[tuple[str, float, str]]
) -> None:
    state = ready(idle)
    agent, adm = Actor(type="agt", id="a"), Actor(type="adm", id="root")
    clock, expired = 0.0, 0
    reasons: list[str] = []
    for n, (kind, gap, duration) in enumerate(steps):
        clock += gap
        now = shift(T0, clock)
        command: object = {
            "touch": TouchSandbox(command_id=f"t{n}", actor=agent, sandbox_id=SID),
            "extend": ExtendTtl(command_id=f"e{n}", actor=agent, sandbox_id=SID, duration=duration),
            "expire": ExpireSandbox(command_id=f"x{n}", actor=agent, sandbox_id=SID),
            "adm-expire": ExpireSandbox(command_id=f"a{n}", actor=adm, sandbox_id=SID),
            "teardown": FinishTeardown(job_id=f"j{n}"),
        }[kind]
        deadline = due(state)
        try:
            events = decide(state, command, now)  # type: ignore[arg-type]
        except Rejected as refusal:
            reasons.append(refusal.reason)
            continue
        for event in events:
            if event_type(event) == "expired":
                expired += 1
                assert kind == "adm-expire" or (deadline is not None and deadline.at <= now)
            state = evolve(state, event)
        if state.expires_at is not None and state.created_at is not None:
            assert state.expires_at <= shift(state.created_at, 300)  # never past ttl.max
    assert expired <= 1
    assert all(reasons)
