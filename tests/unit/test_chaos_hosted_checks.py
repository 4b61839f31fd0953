"""The fault suite's check of the hosted providers (chaos/scenarios/kill_hosted.py
``provider_problems``) finds what it is meant to: a provider sandbox of a sandbox the log
ended or never heard of, two provider sandboxes of one, and a live sandbox missing at its
provider. Fed with events as the log would hold them."""

from __future__ import annotations

from chaos.scenarios.kill_hosted import provider_problems
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
    log.add(
        SandboxRequested(**head, profile="profile.e2b-burst", profile_version=1),
        f"{subject}.requested",
    )
    log.add(SandboxRouted(**head, extension=extension, reason="fixed"), f"{subject}.routed")
    log.add(SandboxProvisioning(**head, extension=extension), f"{subject}.provisioning")
    log.add(SandboxReady(**head, reachability={}), f"{subject}.ready")


def ended(log: Log, sandbox_id: str) -> None:
    head = {"sandbox_id": sandbox_id, "command_id": "d", "actor": SYSTEM_ACTOR, "at": AT}
    subject = f"sandboxer.evt.sandbox.{sandbox_id}"
    log.add(SandboxDestroying(**head), f"{subject}.destroying")
    log.add(SandboxDestroyed(**head), f"{subject}.destroyed")


def test_a_provider_holding_what_the_log_says_is_clean() -> None:
    log = Log()
    made(log, "sbxlive", "ext.e2b")
    made(log, "sbxgone", "ext.modal")
    ended(log, "sbxgone")
    assert provider_problems(log.view, {"ext.e2b": {"sbxlive": 1}, "ext.modal": {}}) == []


def test_leaks_duplicates_and_losses_are_found() -> None:
    log = Log()
    made(log, "sbxlive", "ext.e2b")
    made(log, "sbxlost", "ext.daytona")
    made(log, "sbxgone", "ext.modal")
    ended(log, "sbxgone")
    live = {
        "ext.e2b": {"sbxlive": 2, "sbxnever": 1},
        "ext.daytona": {},
        "ext.modal": {"sbxgone": 1},
    }
    assert provider_problems(log.view, live) == [
        "ext.daytona: sbxlost ready in the log, not there",
        "ext.e2b: sbxlive duplicated, 2 provider sandboxes",
        "ext.e2b: 1 provider sandbox(es) of sbxnever, unknown to the log",
        "ext.modal: 1 provider sandbox(es) of sbxgone, destroyed",
    ]
