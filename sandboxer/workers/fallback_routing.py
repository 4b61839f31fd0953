"""The control worker's fallback decision for a ``rerouting`` sandbox (``sandboxer.cmd.reroute``).

The next backend is chosen by the same admission, routing and placement as a
create, among the profile's candidates that have not refused the sandbox
(:mod:`sandboxer.domain.fallback`). Its reservation moves to the new backend's
prices first; when nothing is left, or the project cannot pay for what is,
the decision fails the sandbox with every reason.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sandboxer.bus.event_store import EventStore
from sandboxer.commands.types import CreateSandbox, NetworkAsk, RerouteSandbox, consumer_ask
from sandboxer.config.catalog import Catalog
from sandboxer.domain.sandbox_decide import AdmittedCreate, Reroute
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.durations import format_duration
from sandboxer.errors import Rejected, UnknownProfile
from sandboxer.workers.credit_reservation import reserve_for_reroute

__all__ = ["next_route"]

Admit = Callable[[CreateSandbox, tuple[str, ...]], Awaitable[AdmittedCreate]]
"""Admission and routing of a create, leaving out the given backends."""


async def next_route(
    store: EventStore,
    catalog: Catalog,
    state: SandboxState,
    command: RerouteSandbox,
    admit: Admit,
) -> Reroute:
    """The Reroute to decide: the next backend, or none (the sandbox fails) with why.

    A sandbox that is not ``rerouting`` gets a decision the domain rejects
    (``not_rerouting``), so a stray reroute is recorded, not acted on.
    """
    nothing = Reroute(command_id=command.command_id, extension=None, reason="")
    if state.status != "rerouting" or not state.profile or not state.actor:
        return nothing
    again = CreateSandbox(
        command_id=command.command_id,
        actor=state.actor,
        profile=state.profile,
        inputs=state.inputs,
        sandbox_id=state.sandbox_id,
        # The TTL asked for: a cost cap and lowest-cost routing weigh the candidates over it,
        # as the reservation that follows does (the profile's default could be far longer).
        ttl=None if state.ttl_seconds is None else format_duration(state.ttl_seconds),
        # The policy in force goes along, so the next candidate must enforce it too.
        network=NetworkAsk(default=state.network.default, egress=list(state.network.egress))
        if state.network is not None
        else None,
        consumer=consumer_ask(state.consumer),  # a scoped profile's admission asks for it
    )
    refusals = f"refused by {', '.join(state.refused_by)} ({state.failure})"
    try:
        admitted = await admit(again, state.refused_by)
    except (Rejected, UnknownProfile) as none_left:
        why = none_left.reason if isinstance(none_left, Rejected) else none_left.message
        return Reroute(
            command_id=command.command_id,
            extension=None,
            reason=f"no candidate is left: {refusals}; {why}",
        )
    try:
        key = await reserve_for_reroute(
            store, catalog, state, admitted.extension, command.command_id
        )
    except Rejected as unpaid:
        return Reroute(
            command_id=command.command_id,
            extension=None,
            reason=f"{refusals}; the fallback {admitted.extension} cannot be paid for: "
            f"{unpaid.reason}",
        )
    return Reroute(
        command_id=command.command_id,
        extension=admitted.extension,
        reason=f"fallback, {refusals}: {admitted.route_reason}",
        host=admitted.host,
        candidates=admitted.candidates,
        scores=admitted.route_scores,
        provider_key=key,
    )
