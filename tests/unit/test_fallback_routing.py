"""The control worker's fallback decision (workers/fallback_routing.py), its admission given."""

from __future__ import annotations

from typing import Any

from sandboxer.commands.types import CreateSandbox, RerouteSandbox
from sandboxer.config.catalog import Catalog
from sandboxer.domain.sandbox_decide import AdmittedCreate
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.errors import Rejected
from sandboxer.events.actor import Actor
from sandboxer.workers.fallback_routing import next_route


async def test_the_fallback_is_routed_for_the_ttl_the_create_asked() -> None:
    """Routed again with the profile's default TTL (hours) for a ten-minute sandbox, a
    per-create fee was spread 24 times thinner, and a candidate over the cost cap passed."""
    actor = Actor(type="agt", id="a", project="p")
    state = SandboxState(
        sandbox_id="sbxfallback1",
        status="rerouting",
        profile="profile.local",
        actor=actor,
        ttl_seconds=600.0,
        refused_by=("ext.saas-stub",),
    )
    asked: list[CreateSandbox] = []

    async def admit(again: CreateSandbox, refused_by: tuple[str, ...]) -> AdmittedCreate:
        asked.append(again)
        raise Rejected("no_route", "none left")

    command = RerouteSandbox(
        command_id="reroute-sbxfallback1-4", actor=actor, sandbox_id=state.sandbox_id
    )
    decision = await next_route(Any, Catalog.load(), state, command, admit)  # type: ignore[arg-type]
    assert decision.extension is None
    assert [again.ttl for again in asked] == ["10m"]
