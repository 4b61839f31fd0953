"""Routing: which extension serves a profile, and why. Pure: declarations and signals in,
a decision out (docs/routing.md).

Every candidate of the profile is looked at, in the profile's order:

1. **eligibility**, first failing check wins: not installed or not enabled; the network
   policy (the declaration's ``capabilities.network`` must cover what the policy needs, its
   ``network_max_cidrs``, if any, hold the policy's address blocks, and a policy naming an
   IPv6 address go only where ``network_ipv6`` is not false,
   docs/network.md#enforcement); the profile's ``isolation.level`` when it writes one; the
   route's constraints (``require_isolation``, held to by the same rule as the level: a
   stronger level serves, :func:`isolation_short`; ``gpu``, ``snapshot``, ``pause``,
   ``region``, ``max_cost_per_hour`` against the estimate for the requested TTL); an open
   circuit; no capacity left (live sandboxes >= the declaration's ``max_sandboxes``, and
   for a backend on hosts no host its placement could use with room, :func:`_room`); for
   this create only, placement found no usable host on it (``unplaced``: the control worker
   routes again without it when its probe finds every host down);
2. a **score** for the strategy, lower is better: ``explicit`` the profile's order,
   ``lowest-cost`` the estimate in micro-USD, ``lowest-latency`` the measured p50 in
   seconds (unmeasured ones after every measured one), ``prefer-self-hosted`` 0 for a
   self-hosted backend and 1 for a hosted one;
3. the eligible candidate with the lowest (score, profile order, id) is chosen: ties are
   broken by the profile's order, then by id, so the same inputs always give the same choice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from sandboxer.config.extension_decl import ExtensionDecl
from sandboxer.config.network_policy import NetworkPolicy, enforces, listing
from sandboxer.config.profile import Profile, RouteConstraints
from sandboxer.domain.host_order import placement_hosts
from sandboxer.domain.pricing import MICRO, estimate_microusd
from sandboxer.domain.route_signals import RouteSignals
from sandboxer.durations import format_duration
from sandboxer.errors import Rejected

__all__ = [
    "ISOLATION_STRENGTH",
    "Candidate",
    "RouteChoice",
    "RouteDecision",
    "isolation_short",
    "microusd",
    "rank",
    "route",
]

UNMEASURED = "unmeasured"


@dataclass(frozen=True)
class Candidate:
    """One candidate as routing saw it."""

    extension: str
    order: int
    """Its place in the profile's list (0 first)."""
    eligible: bool
    why_not: str | None = None
    kind: str | None = None
    score: float | int | None = None
    """The strategy's score, lower is better; None when ineligible (or unmeasured)."""
    estimate_microusd: int | None = None
    latency_p50: float | None = None
    live: int | None = None
    capacity: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "extension": self.extension,
            "eligible": self.eligible,
            "score": self.score,
        }
        if self.why_not is not None:
            data["why_not"] = self.why_not
        for name in ("kind", "estimate_microusd", "latency_p50", "live", "capacity"):
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        return data


@dataclass(frozen=True)
class RouteDecision:
    """Every candidate, and the chosen one (None: none is eligible) with a one-line reason."""

    profile: str
    strategy: str
    ttl_seconds: float
    chosen: str | None
    reason: str
    candidates: list[Candidate] = field(default_factory=list)

    def scores(self) -> list[dict[str, Any]]:
        """What a ``routed`` event records of the candidates."""
        return [c.to_dict() for c in self.candidates]

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "strategy": self.strategy,
            "ttl_seconds": self.ttl_seconds,
            "chosen": self.chosen,
            "reason": self.reason,
            "candidates": self.scores(),
        }


@dataclass(frozen=True)
class RouteChoice:
    extension: str
    reason: str
    candidates: list[str]
    scores: list[dict[str, Any]] = field(default_factory=list)


def microusd(amount: int) -> str:
    """``1234567`` -> ``"1.234567 USD"``, for reasons people read (1 credit = 1 micro-USD)."""
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), int(MICRO))
    return f"{sign}{whole}.{frac:06d} USD"


def _wants_gpu(profile: Profile, constraints: RouteConstraints) -> bool:
    return bool(constraints.gpu or profile.resources.gpu)


def _unmet(
    decl: ExtensionDecl, constraints: RouteConstraints, gpu: bool, estimate: int, ttl: float
) -> str | None:
    """Why ``decl`` cannot satisfy ``constraints``, or None when it can."""
    caps = decl.capabilities
    if constraints.require_isolation:
        short = isolation_short(caps.isolation, constraints.require_isolation)
        if short is not None:
            return f"{short}, weaker than require_isolation {constraints.require_isolation}"
    if gpu and not caps.gpu:
        return "has no GPU"
    if constraints.snapshot and not caps.snapshot:
        return "cannot snapshot"
    if constraints.pause and not caps.pause:
        return "cannot pause"
    if constraints.region and caps.regions and constraints.region not in caps.regions:
        return f"does not run in region {constraints.region}"
    if constraints.max_cost_per_hour is not None:
        # Per hour of the requested TTL: estimate * 3600 / ttl, compared in micro-USD.
        limit = Decimal(str(constraints.max_cost_per_hour)) * MICRO
        hours = Decimal(str(max(ttl, 1.0))) / 3600
        if Decimal(estimate) > limit * hours:
            per_hour = (Decimal(estimate) / hours).to_integral_value()
            return (
                f"costs about {microusd(int(per_hour))}/h for {format_duration(ttl)}, more than "
                f"max_cost_per_hour {constraints.max_cost_per_hour}"
            )
    return None


ISOLATION_STRENGTH = {"policy": 0, "namespace": 1, "container": 2, "microvm": 3}
"""Isolation levels from the weakest (docs/routing.md): each separates a sandbox from its host
at least as well as every one before it."""


def isolation_short(offered: Sequence[str], level: str) -> str | None:
    """Whether a backend offering ``offered`` can give isolation ``level``: None when one of
    its levels is as strong or stronger (asking for ``container`` is served by ``microvm``),
    else what it offers. The one rule for a profile's ``isolation.level`` and a route's
    ``require_isolation`` alike."""
    if max(ISOLATION_STRENGTH[kind] for kind in offered) >= ISOLATION_STRENGTH[level]:
        return None
    return f"offers {', '.join(offered)} isolation"


def _isolation_unmet(decl: ExtensionDecl, profile: Profile) -> str | None:
    """Why ``decl`` cannot give the isolation the profile states, or None when it can. Only
    a level the profile writes itself is held to: the default asks for nothing."""
    if "isolation" not in profile.model_fields_set:
        return None
    level = profile.isolation.level
    short = isolation_short(decl.capabilities.isolation, level)
    return None if short is None else f"{short}, weaker than the profile's {level}"


def _network_unmet(decl: ExtensionDecl, profile: Profile) -> str | None:
    """Why ``decl`` cannot enforce the profile's network policy, or None when it can."""
    policy = profile.network.policy()
    need = policy.needs()
    level = decl.capabilities.network
    if enforces(level, need):
        return _ipv6_unmet(decl, policy) or _blocks_unmet(decl, policy)
    what = {
        "all-or-nothing": "no network at all",
        "cidr": "an address allowlist",
        "domain": "a domain allowlist",
    }.get(need, need)
    return (
        f"cannot enforce the network policy ({policy.describe()}): it needs {what} "
        f"(network: {need}) and the backend enforces network: {level}"
    )


def _ipv6_unmet(decl: ExtensionDecl, policy: NetworkPolicy) -> str | None:
    """Why the backend's address allowlist cannot hold the policy's IPv6 entries, or None.
    A provider that takes IPv4 only refuses the create (or drops the entry) after the route
    and the hold."""
    v6 = policy.ipv6_addresses()
    if decl.capabilities.network_ipv6 or not v6:
        return None
    return (
        f"cannot hold the network policy ({policy.describe()}): its allowlist takes IPv4 "
        f"addresses only (network_ipv6: false) and the policy names IPv6 {listing(v6)}; "
        "name those destinations by domain or as IPv4, or route the profile to another backend"
    )


def _blocks_unmet(decl: ExtensionDecl, policy: NetworkPolicy) -> str | None:
    """Why the backend's address allowlist cannot hold the policy's, or None. A provider
    refuses (or, worse, cuts) a longer list at create, after the route and the hold."""
    limit = decl.capabilities.network_max_cidrs
    if limit is None:  # before the blocks: merging them is work every create paid for
        return None
    blocks = policy.address_blocks()
    if len(blocks) <= limit:
        return None
    return (
        f"cannot hold the network policy ({policy.describe()}): its address entries make "
        f"{len(blocks)} CIDR blocks and the backend's allowlist takes at most {limit} "
        f"(network_max_cidrs: {limit}); cover them with {limit} or fewer wider CIDRs, or name "
        "them by domain, or route the profile to another backend"
    )


def _room(
    decl: ExtensionDecl, profile: Profile, host: str | None, signals: RouteSignals
) -> tuple[int | None, int | None, str | None]:
    """(live, capacity, why it has no room) of a candidate; without signals nothing is judged.

    The declaration's ``capacity.max_sandboxes`` caps the backend's live sandboxes. A backend
    on hosts (when the caller read the hosts file) has room only if one of the hosts its
    placement would try is not full, by the rule placement skips hosts with
    (``host_order.placement_hosts``): summing every host's ``max_sandboxes`` counted hosts the
    profile never places on, so a backend whose hosts were full was chosen and its create then
    rejected at placement instead of routed elsewhere. Its live and capacity are then those of
    the hosts its placement may use (capacity None when one of them has no limit)."""
    declared = decl.capacity.max_sandboxes if decl.capacity is not None else None
    if not signals.known:
        return None, declared, None
    live = signals.live.get(decl.id, 0)
    if declared is not None and live >= declared:
        return live, declared, f"has no capacity ({live} of {declared} sandboxes live)"
    limits = signals.host_limits
    if not decl.uses_hosts or limits is None:
        return live, declared, None
    on_hosts = signals.live_by_host.get(decl.id, {})
    tried = placement_hosts(profile.placement, host, limits, on_hosts)
    listed = [name for name, _ in tried if name in limits]
    bounds = [limits[name] for name in listed]
    capacity = None if None in bounds else sum(b for b in bounds if b is not None)
    held = sum(on_hosts.get(name, 0) for name in listed)
    skipped = [why for _, why in tried if why is not None]
    if not tried:
        return held, capacity, "has no host to place on (the hosts file lists none)"
    if len(skipped) < len(tried):
        return held, capacity, None
    return held, capacity, "has no host with room (" + "; ".join(skipped) + ")"


def _score(strategy: str, candidate: Candidate) -> float | int | None:
    if strategy == "lowest-cost":
        return candidate.estimate_microusd
    if strategy == "lowest-latency":
        return candidate.latency_p50
    if strategy == "prefer-self-hosted":
        return 0 if candidate.kind == "self-hosted" else 1
    return candidate.order


def _key(strategy: str, candidate: Candidate) -> tuple[int, float, int, str]:
    score = candidate.score
    unmeasured = 1 if score is None else 0
    return (unmeasured, float(score or 0), candidate.order, candidate.extension)


def _assess(
    ext_id: str,
    order: int,
    decl: ExtensionDecl | None,
    profile: Profile,
    ttl: float,
    signals: RouteSignals,
    now: str,
    host: str | None,
    unplaced: str | None,
) -> Candidate:
    if decl is None:
        return Candidate(ext_id, order, False, "is not installed or not enabled")
    constraints = profile.route.constraints if profile.route else RouteConstraints()
    gpu = _wants_gpu(profile, constraints)
    estimate = estimate_microusd(decl.pricing, ttl, gpu)
    latency = signals.latency_p50.get(ext_id)
    live, capacity, full = _room(decl, profile, host, signals)
    seen = Candidate(
        ext_id,
        order,
        True,
        kind=decl.kind,
        estimate_microusd=estimate,
        latency_p50=latency,
        live=live,
        capacity=capacity,
    )
    why_not = (
        _network_unmet(decl, profile)
        or _isolation_unmet(decl, profile)
        or _unmet(decl, constraints, gpu, estimate, ttl)
    )
    if profile.extension is None:  # routed: weighed by signals (a fixed backend is not)
        circuit = signals.circuits.get(ext_id)
        if why_not is None and circuit is not None and circuit.until > now:
            why_not = f"circuit open until {circuit.until} ({circuit.reason})"
        why_not = why_not or full
    if why_not is None and unplaced is not None:
        # Routing chose it and placement's probe then found none of its hosts usable (down,
        # or full since): known only to the probe, and only for this create.
        why_not = f"has no reachable host ({unplaced})"
    return seen if why_not is None else _ineligible(seen, why_not)


def _ineligible(candidate: Candidate, why_not: str) -> Candidate:
    return replace(candidate, eligible=False, why_not=why_not)


def rank(
    profile: Profile,
    enabled: Mapping[str, ExtensionDecl],
    *,
    ttl_seconds: float,
    signals: RouteSignals | None = None,
    now: str = "",
    host: str | None = None,
    unplaced: Mapping[str, str] | None = None,
) -> RouteDecision:
    """Assess and score every candidate; never raises (``chosen`` None when none is eligible).
    ``host``: the host the create asks for, the only one placement may then use.
    ``unplaced``: backends this create was routed to whose placement found no usable host,
    with placement's reason (docs/routing.md#no-reachable-host): ineligible this time."""
    unplaced = unplaced or {}
    signals = signals if signals is not None else RouteSignals.unknown("no signals given")
    strategy = profile.route.strategy if profile.route else "explicit"
    ids: list[str] = []
    for ext_id in profile.candidates():
        if ext_id not in ids:
            ids.append(ext_id)
    assessed = []
    for order, ext_id in enumerate(ids):
        candidate = _assess(
            ext_id,
            order,
            enabled.get(ext_id),
            profile,
            ttl_seconds,
            signals,
            now,
            host,
            unplaced.get(ext_id),
        )
        if candidate.eligible:
            candidate = replace(candidate, score=_score(strategy, candidate))
        assessed.append(candidate)
    eligible = sorted((c for c in assessed if c.eligible), key=lambda c: _key(strategy, c))
    skipped = [f"{c.extension} {c.why_not}" for c in assessed if not c.eligible]
    if not eligible:
        reason = f"no extension can serve {profile.id}: " + "; ".join(skipped)
        return RouteDecision(profile.id, strategy, ttl_seconds, None, reason, assessed)
    chosen = eligible[0]
    reason = _why(strategy, chosen, profile, eligible, ttl_seconds)
    if skipped:
        reason += " (skipped: " + "; ".join(skipped) + ")"
    if not signals.known and profile.route is not None:
        reason += f" [without signals: {signals.note}]" if signals.note else " [without signals]"
    return RouteDecision(profile.id, strategy, ttl_seconds, chosen.extension, reason, assessed)


def _why(
    strategy: str, chosen: Candidate, profile: Profile, eligible: list[Candidate], ttl: float
) -> str:
    room = (
        f", {chosen.live} of {chosen.capacity} live"
        if chosen.capacity is not None and chosen.live is not None
        else ""
    )
    if profile.extension is not None:
        return "fixed by profile"
    if strategy == "lowest-cost":
        assert chosen.estimate_microusd is not None
        return (
            f"lowest-cost: {chosen.extension} is estimated at "
            f"{microusd(chosen.estimate_microusd)} for {format_duration(ttl)}, the least of "
            f"{len(eligible)} eligible"
        )
    if strategy == "lowest-latency":
        if chosen.latency_p50 is None:
            return (
                f"lowest-latency: no eligible candidate is measured yet; {chosen.extension} "
                "is first in the profile's order"
            )
        return (
            f"lowest-latency: {chosen.extension} is ready in {chosen.latency_p50:g} s (p50), "
            f"the fastest of {len(eligible)} eligible"
        )
    if strategy == "prefer-self-hosted":
        if chosen.kind == "self-hosted":
            return f"prefer-self-hosted: {chosen.extension} is self-hosted and has room{room}"
        return f"prefer-self-hosted: no self-hosted candidate is eligible; {chosen.extension}"
    return f"explicit: {chosen.extension} is the first eligible candidate{room}"


def route(
    profile: Profile,
    enabled: Mapping[str, ExtensionDecl],
    *,
    ttl_seconds: float | None = None,
    signals: RouteSignals | None = None,
    now: str = "",
    host: str | None = None,
    unplaced: Mapping[str, str] | None = None,
) -> RouteChoice:
    """Pick the extension for ``profile`` among the ``enabled`` ones; Rejected when none fits
    (``no_host`` when a backend was passed over only because placement found no host on it)."""
    ttl = ttl_seconds if ttl_seconds is not None else 3600.0
    decision = rank(
        profile, enabled, ttl_seconds=ttl, signals=signals, now=now, host=host, unplaced=unplaced
    )
    if decision.chosen is None:
        raise _none_left(decision, unplaced or {})
    return RouteChoice(
        decision.chosen,
        decision.reason,
        [c.extension for c in decision.candidates],
        decision.scores(),
    )


def _none_left(decision: RouteDecision, unplaced: Mapping[str, str]) -> Rejected:
    """The rejection of a create no candidate can serve. When routing had chosen a backend
    whose placement then found no usable host, the create fails for want of a host, as it
    did before it could fall to another candidate: ``no_host``, with each host's reason (a
    lone candidate's in placement's own words)."""
    if not unplaced:
        return Rejected(
            "no_route",
            decision.reason + ". Enable one with its declaration in $SANDBOXER_HOME/extensions/",
        )
    if len(decision.candidates) == 1 and decision.candidates[0].extension in unplaced:
        return Rejected("no_host", unplaced[decision.candidates[0].extension])
    return Rejected("no_host", decision.reason)
