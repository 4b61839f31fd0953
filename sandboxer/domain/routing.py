"""Routing: which extension serves a profile. Pure: it sees declarations, not backends."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sandboxer.config.extension_decl import ExtensionDecl
from sandboxer.config.profile import Profile, RouteConstraints
from sandboxer.errors import Rejected

__all__ = ["RouteChoice", "route"]


@dataclass(frozen=True)
class RouteChoice:
    extension: str
    reason: str
    candidates: list[str]


def _unmet(decl: ExtensionDecl, constraints: RouteConstraints) -> str | None:
    """Why ``decl`` cannot satisfy ``constraints``, or None when it can."""
    caps = decl.capabilities
    if constraints.require_isolation and constraints.require_isolation not in caps.isolation:
        return f"offers no {constraints.require_isolation} isolation"
    if constraints.snapshot and not caps.snapshot:
        return "cannot snapshot"
    if constraints.gpu and not caps.gpu:
        return "has no GPU"
    if constraints.region and caps.regions and constraints.region not in caps.regions:
        return f"does not run in region {constraints.region}"
    if (
        constraints.max_cost_per_hour is not None
        and decl.pricing.per_second * 3600 > constraints.max_cost_per_hour
    ):
        return f"costs more than {constraints.max_cost_per_hour}/h"
    return None


def route(profile: Profile, enabled: Mapping[str, ExtensionDecl]) -> RouteChoice:
    """Pick the extension for ``profile`` among the ``enabled`` ones; Rejected when none fits."""
    candidates = profile.candidates()
    constraints = profile.route.constraints if profile.route else RouteConstraints()
    strategy = profile.route.strategy if profile.route else "explicit"
    usable: list[ExtensionDecl] = []
    refusals: list[str] = []
    for ext_id in candidates:
        decl = enabled.get(ext_id)
        if decl is None:
            refusals.append(f"{ext_id} is not installed or not enabled")
            continue
        why_not = _unmet(decl, constraints)
        if why_not:
            refusals.append(f"{ext_id} {why_not}")
            continue
        usable.append(decl)
    if not usable:
        raise Rejected(
            "no_route",
            f"no extension can serve {profile.id}: "
            + "; ".join(refusals)
            + ". Enable one with its declaration in $SANDBOXER_HOME/extensions/",
        )
    if strategy == "lowest-cost":
        chosen = min(usable, key=lambda d: (d.pricing.per_second, d.pricing.per_create))
        reason = f"lowest-cost: {chosen.pricing.per_second}/s"
    elif strategy == "prefer-self-hosted":
        self_hosted = [d for d in usable if d.kind == "self-hosted"]
        chosen = (self_hosted or usable)[0]
        reason = f"prefer-self-hosted: {chosen.kind}"
    else:  # explicit, and lowest-latency until latency is measured: the profile's order
        chosen = usable[0]
        reason = "fixed by profile" if profile.extension else f"{strategy}: first usable candidate"
    if refusals:
        reason += " (skipped: " + "; ".join(refusals) + ")"
    return RouteChoice(chosen.id, reason, candidates)
