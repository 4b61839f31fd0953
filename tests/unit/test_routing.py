"""Routing, pure: eligibility, scores per strategy, deterministic ties, the explanation."""

from __future__ import annotations

import random
from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandboxer.commands.types import CreateSandbox
from sandboxer.config.extension_decl import ExtensionDecl
from sandboxer.config.profile import Isolation, Profile, RouteConstraints
from sandboxer.domain.admission import admit_create
from sandboxer.domain.pricing import estimate_microusd
from sandboxer.domain.route_signals import Circuit, RouteSignals
from sandboxer.domain.routing import ISOLATION_STRENGTH, rank, route
from sandboxer.errors import Rejected
from sandboxer.events.types import Actor

NOW = "2026-12-02T10:00:00.000Z"
LATER = "2026-12-02T10:01:00.000Z"
ISOLATIONS = ["container", "microvm", "policy", "namespace"]
WEAKEST_FIRST = ["policy", "namespace", "container", "microvm"]
"""docs/routing.md's order of the isolation levels, for the tests' own statement of it."""
STRATEGIES = ["explicit", "lowest-cost", "lowest-latency", "prefer-self-hosted"]


def decl(
    ext_id: str,
    *,
    kind: str = "saas",
    isolation: tuple[str, ...] = ("container",),
    gpu: bool = False,
    snapshot: bool = False,
    pause: bool = False,
    regions: tuple[str, ...] = (),
    per_second: float = 0.0,
    per_create: float = 0.0,
    gpu_per_second: float = 0.0,
    capacity: int | None = None,
    network: str = "all-or-nothing",
    uses_hosts: bool = False,
) -> ExtensionDecl:
    data: dict[str, Any] = {
        "id": ext_id,
        "kind": kind,
        "uses_hosts": uses_hosts,
        "entry_point": "m:C",
        "capabilities": {
            "isolation": list(isolation),
            "gpu": gpu,
            "snapshot": snapshot,
            "pause": pause,
            "regions": list(regions),
            "network": network,
        },
        "pricing": {
            "per_second": per_second,
            "per_create": per_create,
            "gpu_per_second": gpu_per_second,
        },
    }
    if capacity is not None:
        data["capacity"] = {"max_sandboxes": capacity}
    return ExtensionDecl.model_validate(data)


def profile(strategy: str, candidates: list[str], **constraints: Any) -> Profile:
    return Profile.model_validate(
        {
            "id": "profile.routed",
            "route": {"strategy": strategy, "candidates": candidates, "constraints": constraints},
        }
    )


# -- examples ------------------------------------------------------------------------------------


def test_prefer_self_hosted_spills_when_full_and_returns_when_room_frees() -> None:
    enabled = {
        "ext.local": decl("ext.local", kind="self-hosted", isolation=("namespace",), capacity=2),
        "ext.saas-stub": decl("ext.saas-stub", per_second=0.0001),
    }
    burst = profile("prefer-self-hosted", ["ext.saas-stub", "ext.local"])
    with_room = RouteSignals(live={"ext.local": 1})
    full = RouteSignals(live={"ext.local": 2, "ext.saas-stub": 5})
    assert route(burst, enabled, signals=with_room, now=NOW).extension == "ext.local"
    spilled = rank(burst, enabled, ttl_seconds=60, signals=full, now=NOW)
    assert spilled.chosen == "ext.saas-stub"
    local = next(c for c in spilled.candidates if c.extension == "ext.local")
    assert not local.eligible
    assert local.why_not == "has no capacity (2 of 2 sandboxes live)"
    assert "ext.local has no capacity" in spilled.reason


def test_an_open_circuit_skips_a_backend_until_it_closes() -> None:
    enabled = {"ext.a": decl("ext.a"), "ext.b": decl("ext.b")}
    signals = RouteSignals(circuits={"ext.a": Circuit(until=LATER, reason="quota refusal")})
    p = profile("explicit", ["ext.a", "ext.b"])
    decision = rank(p, enabled, ttl_seconds=60, signals=signals, now=NOW)
    assert decision.chosen == "ext.b"
    assert "circuit open until 2026-12-02T10:01:00.000Z" in decision.reason
    assert rank(p, enabled, ttl_seconds=60, signals=signals, now=LATER).chosen == "ext.a"


def test_lowest_cost_uses_the_estimate_for_the_ttl_not_the_per_second_price() -> None:
    # ext.a: cheap per second, dear per create; ext.b the opposite. The TTL decides.
    enabled = {
        "ext.a": decl("ext.a", per_second=0.0001, per_create=0.05),
        "ext.b": decl("ext.b", per_second=0.001, per_create=0.0),
    }
    p = profile("lowest-cost", ["ext.a", "ext.b"])
    assert rank(p, enabled, ttl_seconds=30, signals=RouteSignals(), now=NOW).chosen == "ext.b"
    long = rank(p, enabled, ttl_seconds=3600, signals=RouteSignals(), now=NOW)
    assert long.chosen == "ext.a"
    assert [c.estimate_microusd for c in long.candidates] == [410_000, 3_600_000]
    assert "0.410000 USD for 1h" in long.reason


def test_max_cost_per_hour_uses_the_estimate_for_the_requested_ttl() -> None:
    # 0.001/s is 3.6 USD/h; a 1 USD per-create fee over a 1 h TTL adds 1 USD/h.
    enabled = {"ext.a": decl("ext.a", per_second=0.001, per_create=1.0)}
    p = profile("explicit", ["ext.a"], max_cost_per_hour=4.0)
    assert rank(p, enabled, ttl_seconds=36_000, now=NOW).chosen == "ext.a"  # 3.7/h over 10 h
    refused = rank(p, enabled, ttl_seconds=3600, now=NOW)  # 4.6/h
    assert refused.chosen is None
    assert "more than max_cost_per_hour 4.0" in refused.reason


def test_lowest_latency_ranks_measured_first_then_profile_order() -> None:
    enabled = {e: decl(e) for e in ("ext.a", "ext.b", "ext.c")}
    p = profile("lowest-latency", ["ext.a", "ext.b", "ext.c"])
    measured = RouteSignals(latency_p50={"ext.c": 2.5, "ext.b": 0.4})
    decision = rank(p, enabled, ttl_seconds=60, signals=measured, now=NOW)
    assert decision.chosen == "ext.b"
    assert "0.4 s (p50)" in decision.reason
    unmeasured = rank(p, enabled, ttl_seconds=60, signals=RouteSignals(), now=NOW)
    assert unmeasured.chosen == "ext.a"
    assert "no eligible candidate is measured yet" in unmeasured.reason


def test_constraints_filter_before_ranking_and_every_reason_is_kept() -> None:
    enabled = {
        "ext.vm": decl("ext.vm", isolation=("microvm",), gpu=True, pause=True, regions=("eu",)),
        "ext.nogpu": decl("ext.nogpu", isolation=("microvm",)),
        "ext.us": decl("ext.us", isolation=("microvm",), gpu=True, pause=True, regions=("us",)),
        "ext.box": decl("ext.box", isolation=("container",), gpu=True),
        "ext.nopause": decl("ext.nopause", isolation=("microvm",), gpu=True, regions=("eu",)),
    }
    p = profile(
        "lowest-cost",
        ["ext.gone", "ext.box", "ext.nogpu", "ext.us", "ext.nopause", "ext.vm"],
        require_isolation="microvm",
        gpu="any",
        region="eu",
        pause=True,
    )
    decision = rank(p, enabled, ttl_seconds=60, signals=RouteSignals(), now=NOW)
    assert decision.chosen == "ext.vm"
    why = {c.extension: c.why_not for c in decision.candidates}
    assert why == {
        "ext.gone": "is not installed or not enabled",
        "ext.box": "offers container isolation, weaker than require_isolation microvm",
        "ext.nogpu": "has no GPU",
        "ext.us": "does not run in region eu",
        "ext.nopause": "cannot pause",
        "ext.vm": None,
    }


def test_no_eligible_candidate_is_rejected_with_each_reason() -> None:
    p = profile("explicit", ["ext.a", "ext.b"], snapshot=True)
    with pytest.raises(Rejected, match=r"ext.a is not installed.*ext.b cannot snapshot"):
        route(p, {"ext.b": decl("ext.b")}, signals=RouteSignals(), now=NOW)


def test_without_signals_capacity_is_not_enforced_and_the_reason_says_so() -> None:
    enabled = {"ext.local": decl("ext.local", kind="self-hosted", capacity=0)}
    p = profile("prefer-self-hosted", ["ext.local"])
    decision = rank(
        p, enabled, ttl_seconds=60, signals=RouteSignals.unknown("the view did not answer")
    )
    assert decision.chosen == "ext.local"
    assert decision.reason.endswith("[without signals: the view did not answer]")


def test_a_fixed_profile_is_not_routed_by_capacity_or_circuits() -> None:
    enabled = {"ext.local": decl("ext.local", kind="self-hosted", capacity=1)}
    fixed = Profile.model_validate({"id": "profile.fixed", "extension": "ext.local"})
    signals = RouteSignals(
        live={"ext.local": 5}, circuits={"ext.local": Circuit(until=LATER, reason="x")}
    )
    choice = route(fixed, enabled, signals=signals, now=NOW)
    assert (choice.extension, choice.reason) == ("ext.local", "fixed by profile")


def test_admission_records_scores_for_the_routed_event() -> None:
    enabled = {
        "ext.local": decl("ext.local", kind="self-hosted", capacity=8),
        "ext.saas-stub": decl("ext.saas-stub", per_second=0.0001, per_create=0.001),
    }
    p = profile("prefer-self-hosted", ["ext.local", "ext.saas-stub"])
    command = CreateSandbox(
        command_id="c1", actor=Actor(type="adm", id="t"), profile=p.id, ttl="30m"
    )
    admitted = admit_create(command, p, enabled, RouteSignals(live={"ext.local": 3}), NOW)
    assert admitted.extension == "ext.local"
    assert admitted.route_scores == [
        {
            "extension": "ext.local",
            "eligible": True,
            "score": 0,
            "kind": "self-hosted",
            "estimate_microusd": 0,
            "live": 3,
            "capacity": 8,
        },
        {
            "extension": "ext.saas-stub",
            "eligible": True,
            "score": 1,
            "kind": "saas",
            "estimate_microusd": 181_000,
            "live": 0,
        },
    ]
    assert (
        admitted.route_reason
        == "prefer-self-hosted: ext.local is self-hosted and has room, 3 of 8 live"
    )


def test_signals_survive_their_wire_form() -> None:
    signals = RouteSignals(
        latency_p50={"ext.a": 1.5},
        live={"ext.a": 2},
        live_by_host={"ext.c": {"h1": 1}},
        host_limits={"h1": 4, "h2": None},
        circuits={"ext.b": Circuit(until=LATER, reason="quota refusal")},
    )
    assert RouteSignals.from_dict(signals.to_dict()) == signals
    assert RouteSignals.from_dict(RouteSignals().to_dict()).host_limits is None
    with pytest.raises(ValueError, match="bad host_limits"):
        RouteSignals.from_dict({"host_limits": {"h1": -1}})
    with pytest.raises(ValueError, match="bad count"):
        RouteSignals.from_dict({"live": {"ext.a": "many"}})


# -- properties ----------------------------------------------------------------------------------

EXT_IDS = [f"ext.b{i}" for i in range(6)]
prices = st.sampled_from([0.0, 0.00001, 0.0001, 0.00025, 0.001, 0.5])


@st.composite
def worlds(draw: st.DrawFn) -> tuple[Profile, dict[str, ExtensionDecl], RouteSignals, float]:
    candidates = draw(st.lists(st.sampled_from(EXT_IDS), min_size=1, max_size=6, unique=True))
    enabled: dict[str, ExtensionDecl] = {}
    for ext_id in EXT_IDS:
        if draw(st.booleans()) or ext_id in candidates[:1]:
            enabled[ext_id] = decl(
                ext_id,
                kind=draw(st.sampled_from(["saas", "self-hosted"])),
                isolation=tuple(
                    draw(st.lists(st.sampled_from(ISOLATIONS), min_size=1, max_size=2, unique=True))
                ),
                gpu=draw(st.booleans()),
                snapshot=draw(st.booleans()),
                pause=draw(st.booleans()),
                regions=tuple(draw(st.lists(st.sampled_from(["eu", "us"]), unique=True))),
                per_second=draw(prices),
                per_create=draw(prices),
                gpu_per_second=draw(prices),
                capacity=draw(st.none() | st.integers(0, 4)),
            )
    constraints: dict[str, Any] = {}
    if draw(st.booleans()):
        constraints["require_isolation"] = draw(st.sampled_from(ISOLATIONS))
    for flag in ("snapshot", "pause"):
        if draw(st.booleans()):
            constraints[flag] = True
    if draw(st.booleans()):
        constraints["gpu"] = "any"
    if draw(st.booleans()):
        constraints["region"] = draw(st.sampled_from(["eu", "us"]))
    if draw(st.booleans()):
        constraints["max_cost_per_hour"] = draw(st.sampled_from([0.1, 1.0, 10.0]))
    p = profile(draw(st.sampled_from(STRATEGIES)), candidates, **constraints)
    signals = RouteSignals(
        latency_p50=draw(
            st.dictionaries(st.sampled_from(EXT_IDS), st.sampled_from([0.2, 0.5, 1.0, 3.0]))
        ),
        live=draw(st.dictionaries(st.sampled_from(EXT_IDS), st.integers(0, 5))),
        circuits=draw(
            st.dictionaries(
                st.sampled_from(EXT_IDS),
                st.sampled_from([Circuit(NOW, "closed now"), Circuit(LATER, "open")]),
            )
        ),
    )
    ttl = draw(st.sampled_from([1.0, 60.0, 1800.0, 3600.0, 86_400.0]))
    return p, enabled, signals, ttl


def _incapable(p: Profile, d: ExtensionDecl, signals: RouteSignals, ttl: float) -> bool:
    """An independent statement of eligibility, to hold the implementation against."""
    c = p.route.constraints if p.route else None
    assert c is not None
    caps = d.capabilities
    strongest = max(WEAKEST_FIRST.index(level) for level in caps.isolation)
    if c.require_isolation and strongest < WEAKEST_FIRST.index(c.require_isolation):
        return True
    if c.gpu and not caps.gpu:
        return True
    if (c.snapshot and not caps.snapshot) or (c.pause and not caps.pause):
        return True
    if c.region and caps.regions and c.region not in caps.regions:
        return True
    estimate = estimate_microusd(d.pricing, ttl, bool(c.gpu))
    if c.max_cost_per_hour is not None and estimate * 3600 > c.max_cost_per_hour * 1e6 * ttl:
        return True
    circuit = signals.circuits.get(d.id)
    if circuit is not None and circuit.until > NOW:
        return True
    cap = d.capacity.max_sandboxes if d.capacity else None
    return cap is not None and signals.live.get(d.id, 0) >= cap


@settings(max_examples=200, deadline=None)
@given(worlds())
def test_never_an_ineligible_or_incapable_backend(world: Any) -> None:
    p, enabled, signals, ttl = world
    decision = rank(p, enabled, ttl_seconds=ttl, signals=signals, now=NOW)
    assert [c.extension for c in decision.candidates] == list(dict.fromkeys(p.candidates()))
    for c in decision.candidates:
        d = enabled.get(c.extension)
        expected = d is not None and not _incapable(p, d, signals, ttl)
        assert c.eligible == expected, (c, d)
        assert c.eligible == (c.why_not is None)
    if decision.chosen is None:
        assert not any(c.eligible for c in decision.candidates)
        with pytest.raises(Rejected):
            route(p, enabled, ttl_seconds=ttl, signals=signals, now=NOW)
    else:
        chosen = next(c for c in decision.candidates if c.extension == decision.chosen)
        assert chosen.eligible
        assert decision.chosen in decision.reason


@settings(max_examples=200, deadline=None)
@given(worlds())
def test_strategies_pick_their_minimum(world: Any) -> None:
    p, enabled, signals, ttl = world
    decision = rank(p, enabled, ttl_seconds=ttl, signals=signals, now=NOW)
    eligible = [c for c in decision.candidates if c.eligible]
    if not eligible:
        return
    chosen = next(c for c in eligible if c.extension == decision.chosen)
    strategy = p.route.strategy if p.route else "explicit"
    if strategy == "lowest-cost":
        assert chosen.estimate_microusd == min(c.estimate_microusd or 0 for c in eligible)
    elif strategy == "lowest-latency":
        measured = [c.latency_p50 for c in eligible if c.latency_p50 is not None]
        if measured:
            assert chosen.latency_p50 == min(measured)
        else:
            assert chosen is eligible[0]
    elif strategy == "prefer-self-hosted":
        if any(c.kind == "self-hosted" for c in eligible):
            assert chosen.kind == "self-hosted"
    else:
        assert chosen is eligible[0]
    # Among equal scores, the profile's order decides.
    ties = [c for c in eligible if c.score == chosen.score]
    assert chosen is ties[0]


@settings(max_examples=150, deadline=None)
@given(worlds(), st.randoms(use_true_random=False))
def test_same_inputs_same_choice_whatever_the_dict_order(world: Any, rnd: random.Random) -> None:
    p, enabled, signals, ttl = world

    def shuffled(mapping: dict[str, Any]) -> dict[str, Any]:
        items = list(mapping.items())
        rnd.shuffle(items)
        return dict(items)

    again = RouteSignals(
        latency_p50=shuffled(dict(signals.latency_p50)),
        live=shuffled(dict(signals.live)),
        circuits=shuffled(dict(signals.circuits)),
    )
    first = rank(p, enabled, ttl_seconds=ttl, signals=signals, now=NOW)
    second = rank(p, shuffled(enabled), ttl_seconds=ttl, signals=again, now=NOW)
    assert first == second


def test_a_profile_is_not_served_weaker_isolation_than_it_states() -> None:
    """A profile writing isolation microvm and naming a namespace backend was routed there
    ("fixed by profile"), silently weaker than it says; a stronger backend still serves."""
    enabled = {
        "ext.ns": decl("ext.ns", isolation=("namespace",)),
        "ext.vm": decl("ext.vm", isolation=("microvm",)),
    }
    fixed = Profile.model_validate(
        {"id": "profile.fixed", "extension": "ext.ns", "isolation": {"level": "microvm"}}
    )
    with pytest.raises(Rejected, match="weaker than the profile's microvm"):
        route(fixed, enabled)
    routed = Profile.model_validate(
        {
            "id": "profile.routed",
            "isolation": {"level": "container"},
            "route": {"strategy": "explicit", "candidates": ["ext.ns", "ext.vm"]},
        }
    )
    assert route(routed, enabled).extension == "ext.vm"
    unstated = Profile.model_validate({"id": "profile.plain", "extension": "ext.ns"})
    assert route(unstated, enabled).extension == "ext.ns"  # the default asks for nothing


def test_isolation_is_one_rule_for_the_profile_s_level_and_require_isolation() -> None:
    """require_isolation asked for the level by name: a microvm backend was refused a route
    that required container ("offers no container isolation"), while a profile stating
    isolation container was served by it. Both now ask whether the backend's strongest
    level is at least the one asked for."""
    for offered in (("policy",), ("namespace",), ("container",), ("microvm",), ISOLATIONS[:2]):
        enabled = {"ext.x": decl("ext.x", isolation=offered)}
        for level in ISOLATIONS:
            stated = Profile.model_validate(
                {
                    "id": "profile.stated",
                    "isolation": {"level": level},
                    "route": {"strategy": "explicit", "candidates": ["ext.x"]},
                }
            )
            required = profile("explicit", ["ext.x"], require_isolation=level)
            serves = max(map(WEAKEST_FIRST.index, offered)) >= WEAKEST_FIRST.index(level)
            for p in (stated, required):
                [seen] = rank(p, enabled, ttl_seconds=60, now=NOW).candidates
                assert seen.eligible == serves, (offered, level, p.id, seen.why_not)
    vm = {"ext.vm": decl("ext.vm", isolation=("microvm",))}
    assert route(profile("explicit", ["ext.vm"], require_isolation="container"), vm).extension
    box = {"ext.box": decl("ext.box", isolation=("container", "namespace"))}
    [seen] = rank(
        profile("explicit", ["ext.box"], require_isolation="microvm"), box, ttl_seconds=60
    ).candidates
    assert seen.why_not == (
        "offers container, namespace isolation, weaker than require_isolation microvm"
    )


def test_every_isolation_level_has_a_strength() -> None:
    """A level added to the schemas without a place in the order would crash routing."""
    levels = set(get_args(Isolation.model_fields["level"].annotation))
    assert set(ISOLATION_STRENGTH) == levels == set(WEAKEST_FIRST)
    required, _none = get_args(RouteConstraints.model_fields["require_isolation"].annotation)
    assert levels == set(get_args(required))
    assert sorted(ISOLATION_STRENGTH, key=ISOLATION_STRENGTH.__getitem__) == WEAKEST_FIRST


def test_a_backend_on_hosts_has_room_only_on_hosts_its_placement_could_use() -> None:
    """Every host's max_sandboxes was summed: a backend whose profile places only on full
    hosts looked as if it had room, was chosen, and the create failed at placement."""
    enabled = {
        "ext.ssh": decl("ext.ssh", kind="self-hosted", uses_hosts=True),
        "ext.stub": decl("ext.stub"),
    }

    def placed(**placement: Any) -> Profile:
        return Profile.model_validate(
            {
                "id": "profile.placed",
                "placement": placement,
                "route": {"strategy": "prefer-self-hosted", "candidates": ["ext.ssh", "ext.stub"]},
            }
        )

    def ssh(
        p: Profile, limits: dict[str, int | None], live: dict[str, int], host: str | None = None
    ) -> Any:
        signals = RouteSignals(
            live={"ext.ssh": sum(live.values())},
            live_by_host={"ext.ssh": live},
            host_limits=limits,
        )
        decision = rank(p, enabled, ttl_seconds=60, signals=signals, now=NOW, host=host)
        return next(c for c in decision.candidates if c.extension == "ext.ssh")

    two = {"alpha": 2, "beta": 2}
    full = ssh(placed(prefer=["alpha"]), two, {"alpha": 2})
    assert not full.eligible
    assert full.why_not == "has no host with room (alpha is full (2 of its max_sandboxes 2))"
    assert (full.live, full.capacity) == (2, 2)  # of the hosts it may use, not 2 of 4
    spill = ssh(placed(prefer=["alpha"], fallback=["beta"]), two, {"alpha": 2})
    assert spill.eligible
    assert (spill.live, spill.capacity) == (2, 4)
    assert ssh(placed(prefer=["alpha"]), two, {"alpha": 2}, host="beta").eligible  # --host
    # a host that holds more than its (lowered) limit hides no room on another
    assert ssh(placed(), two, {"alpha": 5, "beta": 1}).eligible
    drained = ssh(placed(), {"alpha": 0, "beta": 1}, {"beta": 1})
    assert drained.why_not == (
        "has no host with room (alpha is full (0 of its max_sandboxes 0); "
        "beta is full (1 of its max_sandboxes 1))"
    )
    unbounded = ssh(placed(prefer=["gamma"]), {"alpha": 1, "gamma": None}, {"alpha": 1})
    assert unbounded.eligible
    assert unbounded.capacity is None
    missing = ssh(placed(prefer=["sandboxer01"]), two, {})
    assert missing.why_not is not None
    assert "sandboxer01 is not in the hosts file" in missing.why_not
    nothing = ssh(placed(), {}, {})
    assert nothing.why_not == "has no host to place on (the hosts file lists none)"
    # without the hosts file's limits (unreadable), hosts are not judged
    blind = rank(placed(prefer=["alpha"]), enabled, ttl_seconds=60, signals=RouteSignals())
    assert blind.chosen == "ext.ssh"


def test_a_backend_placement_found_no_host_on_is_passed_over_for_the_next() -> None:
    """Whether a host answers only placement's probe knows: a backend whose usable hosts
    were all down was chosen, and its create rejected no_host, with a candidate left."""
    enabled = {
        "ext.ssh": decl("ext.ssh", kind="self-hosted", uses_hosts=True),
        "ext.stub": decl("ext.stub"),
    }
    p = profile("prefer-self-hosted", ["ext.ssh", "ext.stub"])
    down = "no host can take this sandbox: alpha unhealthy: connection refused"
    assert rank(p, enabled, ttl_seconds=60, signals=RouteSignals()).chosen == "ext.ssh"
    decision = rank(p, enabled, ttl_seconds=60, signals=RouteSignals(), unplaced={"ext.ssh": down})
    assert decision.chosen == "ext.stub"
    assert decision.reason.endswith(f"(skipped: ext.ssh has no reachable host ({down}))")
    ssh = decision.candidates[0]
    assert (ssh.eligible, ssh.why_not) == (False, f"has no reachable host ({down})")
    command = CreateSandbox(command_id="c1", actor=Actor(type="adm", id="t"), profile=p.id)
    admitted = admit_create(command, p, enabled, RouteSignals(), NOW, {"ext.ssh": down})
    assert admitted.extension == "ext.stub"
    assert admitted.route_scores[0]["why_not"] == f"has no reachable host ({down})"


def test_no_candidate_left_after_placement_found_no_host_is_no_host() -> None:
    enabled = {"ext.ssh": decl("ext.ssh", kind="self-hosted", uses_hosts=True)}
    down = "no host can take this sandbox: alpha unhealthy: connection refused"
    # the lone candidate, routed or fixed: placement's own words, as before any fallback
    fixed = Profile.model_validate({"id": "profile.fixed", "extension": "ext.ssh"})
    for lone in (profile("explicit", ["ext.ssh"]), fixed):
        with pytest.raises(Rejected) as caught:
            route(lone, enabled, signals=RouteSignals(), now=NOW, unplaced={"ext.ssh": down})
        assert (caught.value.code, caught.value.reason) == ("no_host", down)
    # with others that cannot serve either: every candidate's reason, each host's included
    two = profile("explicit", ["ext.ssh", "ext.b"])
    with pytest.raises(Rejected) as caught:
        route(two, enabled, signals=RouteSignals(), now=NOW, unplaced={"ext.ssh": down})
    assert caught.value.code == "no_host"
    assert caught.value.reason == (
        f"no extension can serve profile.routed: ext.ssh has no reachable host ({down}); "
        "ext.b is not installed or not enabled"
    )
    # placement never involved: no_route, as before
    with pytest.raises(Rejected) as caught:
        route(two, {}, signals=RouteSignals(), now=NOW)
    assert caught.value.code == "no_route"
