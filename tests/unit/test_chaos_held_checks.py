"""The fault suite's check of what lies outside sandboxer (chaos/checks.py
``held_against_log``: a provider's sandboxes, a host's containers or directories) finds what
it is meant to: anything of a sandbox the log ended, never heard of or gave another backend,
more of one sandbox than it has, and a live sandbox missing. Fed with events as the log would
hold them."""

from __future__ import annotations

from chaos.checks import Held, held_against_log
from sandboxer.events.actor import SYSTEM_ACTOR
from sandboxer.events.sandbox_events import (
    SandboxDestroyed,
    SandboxDestroying,
    SandboxProvisioning,
    SandboxReady,
    SandboxRequested,
    SandboxRouted,
)
from tests.unit.test_chaos_pool_checks import AT, Log


def made(log: Log, sandbox_id: str, extension: str) -> None:
    head = {"sandbox_id": sandbox_id, "command_id": "c", "actor": SYSTEM_ACTOR, "at": AT}
    subject = f"sandboxer.evt.sandbox.{sandbox_id}"
    requested = SandboxRequested(**head, profile="profile.e2b-burst", profile_version=1)
    log.add(requested, f"{subject}.requested")
    log.add(SandboxRouted(**head, extension=extension, reason="fixed"), f"{subject}.routed")
    log.add(SandboxProvisioning(**head, extension=extension), f"{subject}.provisioning")
    log.add(SandboxReady(**head, reachability={}), f"{subject}.ready")


def ended(log: Log, sandbox_id: str) -> None:
    head = {"sandbox_id": sandbox_id, "command_id": "d", "actor": SYSTEM_ACTOR, "at": AT}
    subject = f"sandboxer.evt.sandbox.{sandbox_id}"
    log.add(SandboxDestroying(**head), f"{subject}.destroying")
    log.add(SandboxDestroyed(**head), f"{subject}.destroyed")


def held(what: str, backend: str, counts: dict[str, int], each: int = 1) -> Held:
    return Held(what, frozenset({backend}), counts, each)


def test_what_the_log_calls_live_and_nothing_more_is_clean() -> None:
    log = Log()
    made(log, "sbxlive", "ext.e2b")
    made(log, "sbxstack", "ext.compose-ssh")
    made(log, "sbxgone", "ext.modal")
    ended(log, "sbxgone")
    found = [
        held("E2B", "ext.e2b", {"sbxlive": 1}),
        held("containers", "ext.compose-ssh", {"sbxstack": 2}, each=2),
        held("Modal", "ext.modal", {}),
    ]
    assert held_against_log(log.view, found) == []


def test_leaks_duplicates_and_losses_are_found() -> None:
    log = Log()
    made(log, "sbxlive", "ext.e2b")
    made(log, "sbxlost", "ext.daytona")
    made(log, "sbxhalf", "ext.compose-ssh")
    made(log, "sbxgone", "ext.modal")
    ended(log, "sbxgone")
    found = [
        held("E2B", "ext.e2b", {"sbxlive": 2, "sbxnever": 1, "sbxlost": 1}),
        held("Daytona", "ext.daytona", {}),
        held("containers", "ext.compose-ssh", {"sbxhalf": 1}, each=2),
        held("Modal", "ext.modal", {"sbxgone": 1}),
    ]
    assert held_against_log(log.view, found) == [
        "E2B: sbxlive duplicated, 2 (one sandbox has 1)",
        "E2B: 1 of sbxlost, placed on ext.daytona",
        "E2B: 1 of sbxnever, unknown to the log",
        "Daytona: sbxlost ready in the log, 0 of 1 there",
        "containers: sbxhalf ready in the log, 1 of 2 there",
        "Modal: 1 of sbxgone, destroyed",
    ]
