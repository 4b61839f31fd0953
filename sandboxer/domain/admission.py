"""Admission of a create: the profile's input rules and routing, before anything is appended."""

from __future__ import annotations

from collections.abc import Mapping

from sandboxer.commands.types import CreateSandbox, asked_policy
from sandboxer.config.extension_decl import ExtensionDecl
from sandboxer.config.network_policy import NetworkPolicy, narrows
from sandboxer.config.profile import Profile
from sandboxer.domain.route_signals import RouteSignals
from sandboxer.domain.routing import route
from sandboxer.domain.sandbox_decide import AdmittedCreate
from sandboxer.durations import format_duration, parse_duration
from sandboxer.errors import InvalidNetworkPolicy, Rejected
from sandboxer.events.types import NetworkRecord
from sandboxer.ids import derive_sandbox_id

__all__ = ["admit_create", "network_in_force", "requested_host"]


def complete_inputs(profile: Profile, given: Mapping[str, str]) -> dict[str, str]:
    """The inputs with the profile's defaults filled in; Rejected when one is missing or unknown."""
    unknown = sorted(set(given) - set(profile.inputs))
    if unknown:
        allowed = ", ".join(sorted(profile.inputs)) or "none"
        raise Rejected(
            "invalid_input",
            f"{profile.id} takes no input {', '.join(unknown)}; allowed inputs: {allowed}",
        )
    inputs = dict(given)
    for name, spec in profile.inputs.items():
        if name in inputs:
            continue
        if spec.default is not None:
            inputs[name] = spec.default
        elif spec.required:
            raise Rejected(
                "missing_input",
                f"{profile.id} requires input {name!r} ({spec.description or 'no description'}); "
                f"pass it with --input {name}=VALUE",
            )
    return inputs


def admit_create(
    command: CreateSandbox,
    profile: Profile,
    enabled: Mapping[str, ExtensionDecl],
    signals: RouteSignals | None = None,
    now: str = "",
    unplaced: Mapping[str, str] | None = None,
) -> AdmittedCreate:
    """``signals`` None: routing knows no latency, live counts or circuits (and says so).
    ``unplaced``: backends placement already found no usable host on for this create, with
    why (routing passes them over, see :func:`sandboxer.domain.routing.rank`)."""
    inputs = complete_inputs(profile, command.inputs)
    _check_scope(command, profile)
    ttl, ttl_max = _ttl(command, profile)
    network = network_in_force(command, profile)
    profile = profile.with_network(network)  # routing weighs the policy in force
    choice = route(
        profile,
        enabled,
        ttl_seconds=ttl,
        signals=signals if signals is not None else RouteSignals.unknown("none were asked for"),
        now=now,
        host=requested_host(command, profile, inputs),
        unplaced=unplaced,
    )
    return AdmittedCreate(
        command=command,
        sandbox_id=command.sandbox_id or derive_sandbox_id(command.command_id),
        profile_version=profile.version,
        inputs=inputs,
        extension=choice.extension,
        route_reason=choice.reason,
        candidates=choice.candidates,
        route_scores=choice.scores,
        ttl_seconds=ttl,
        ttl_max_seconds=ttl_max,
        idle_reap_seconds=parse_duration(profile.ttl.idle_reap) if profile.ttl.idle_reap else None,
        max_pause_seconds=parse_duration(profile.ttl.max_pause) if profile.ttl.max_pause else None,
        network=NetworkRecord(**network.record()),
    )


def requested_host(
    command: CreateSandbox, profile: Profile, inputs: Mapping[str, str]
) -> str | None:
    """The host a create asks for (``--host``, else the input the profile's
    ``placement.host_input`` names), which overrides the profile's placement."""
    if command.host is not None:
        return command.host
    return inputs.get(profile.placement.host_input) if profile.placement.host_input else None


def network_in_force(command: CreateSandbox, profile: Profile) -> NetworkPolicy:
    """The profile's network policy, or the one the create asks for when that narrows it
    (an ``adm`` actor may also widen it); Rejected with the entry that widens it."""
    own = profile.network.policy()
    if command.network is None:
        return own
    try:
        asked = asked_policy(command.network)
    except (
        InvalidNetworkPolicy
    ) as exc:  # parse_command checked it; a caller that did not is told here
        raise Rejected("invalid_network", exc.message) from None
    refusal = narrows(own, asked)
    if refusal is not None and command.actor.type != "adm":
        raise Rejected(
            "network_widened",
            f"network: {refusal}; a create may narrow the profile's policy, and only an adm "
            "actor may widen it",
        )
    return asked


_SCOPE_NEEDS = {"session": "session_id", "agent": "harness"}
"""What a scoped profile's sandbox is keyed by: the consumer part a create must name."""


def _check_scope(command: CreateSandbox, profile: Profile) -> None:
    """A ``scope: session`` profile is for one harness session, an ``agent`` one for one
    harness: the create must say which (docs/profiles.md#scope)."""
    part = _SCOPE_NEEDS.get(profile.scope or "")
    if part is None:
        return
    if command.consumer is None or getattr(command.consumer, part) is None:
        raise Rejected(
            "missing_consumer",
            f"{profile.id} has scope {profile.scope}: its sandboxes belong to one "
            f"{'harness session' if profile.scope == 'session' else 'agent harness'}; name it "
            f"in the create's consumer.{part}",
        )


def _ttl(command: CreateSandbox, profile: Profile) -> tuple[float, float]:
    """The sandbox's TTL (the command's, else the profile's default) and the profile's max."""
    ttl_max = parse_duration(profile.ttl.max)
    ttl = parse_duration(command.ttl or profile.ttl.default)
    if ttl > ttl_max:
        raise Rejected(
            "ttl_max_exceeded",
            f"ttl {command.ttl or profile.ttl.default} is longer than {profile.id}'s ttl.max "
            f"({format_duration(ttl_max)}); ask for at most {format_duration(ttl_max)}",
        )
    return ttl, ttl_max
