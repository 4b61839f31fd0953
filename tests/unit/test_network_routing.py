"""The network policy as a routing capability, and a create's narrowing of it (pure)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandboxer.commands.parse import parse_command
from sandboxer.commands.types import CreateSandbox, EgressObject, NetworkAsk
from sandboxer.config.catalog import Catalog, packaged_dir
from sandboxer.config.extension_decl import ExtensionDecl
from sandboxer.config.profile import Network, Profile
from sandboxer.domain.admission import admit_create
from sandboxer.domain.routing import rank
from sandboxer.domain.sandbox_decide import AdmittedCreate, MarkReady, StartProvisioning, decide
from sandboxer.domain.sandbox_state import SandboxState, evolve
from sandboxer.errors import InvalidCommand, Rejected
from sandboxer.events.types import Actor, NetworkRecord, SandboxRequested

AGENT = Actor(type="agt", id="agent-1", project="acme")
ADMIN = Actor(type="adm", id="ops")
NOW = "2026-12-02T10:00:00.000Z"
LEVELS = ("none", "all-or-nothing", "cidr", "domain")


def decl(ext_id: str, network: str, **capabilities: Any) -> ExtensionDecl:
    """A saas backend enforcing ``network``, with any other ``capabilities`` it declares."""
    return ExtensionDecl.model_validate(
        {
            "id": ext_id,
            "kind": "saas",
            "entry_point": "m:C",
            "capabilities": {"isolation": ["container"], "network": network, **capabilities},
        }
    )


ENABLED = {f"ext.{level}": decl(f"ext.{level}", level) for level in LEVELS}


def routed_profile(network: dict[str, Any], candidates: list[str] | None = None) -> Profile:
    """``profile.net``, routed explicitly to ``candidates`` (every level's backend, least
    first, by default)."""
    return Profile.model_validate(
        {
            "id": "profile.net",
            "route": {
                "strategy": "explicit",
                "candidates": candidates or [f"ext.{level}" for level in LEVELS],
            },
            "network": network,
        }
    )


@pytest.fixture(scope="module")
def packaged() -> Catalog:
    """The packaged profiles and extension declarations."""
    return Catalog.load(packaged_dir("profiles").parent)


def admit_with_egress(catalog: Catalog, profile_id: str, egress: list[str]) -> AdmittedCreate:
    """A create of ``profile_id`` whose profile's network (deny) lets out only ``egress``,
    admitted among ``catalog``'s enabled extensions (raises Rejected if it is not)."""
    profile = catalog.profile(profile_id).model_copy(update={"network": Network(egress=egress)})
    command = CreateSandbox(command_id="c1", actor=AGENT, profile=profile.id)
    return admit_create(command, profile, catalog.extensions_enabled())


@pytest.mark.parametrize(
    ("network", "eligible"),
    [
        ({"default": "allow"}, ["ext.none", "ext.all-or-nothing", "ext.cidr", "ext.domain"]),
        ({}, ["ext.all-or-nothing", "ext.cidr", "ext.domain"]),  # deny is the default
        ({"egress": ["10.0.0.0/8:443"]}, ["ext.cidr", "ext.domain"]),
        ({"egress": ["10.0.0.0/8", "*.pypi.org:443"]}, ["ext.domain"]),
    ],
)
def test_a_backend_is_eligible_only_when_it_enforces_what_the_policy_needs(
    network: dict[str, Any], eligible: list[str]
) -> None:
    decision = rank(routed_profile(network), ENABLED, ttl_seconds=60)
    assert [c.extension for c in decision.candidates if c.eligible] == eligible
    assert decision.chosen == eligible[0]


def test_route_explain_says_why_a_backend_cannot_enforce_the_policy() -> None:
    decision = rank(routed_profile({"egress": ["*.pypi.org:443"]}), ENABLED, ttl_seconds=60)
    why = {c.extension: c.why_not for c in decision.candidates}
    assert why["ext.cidr"] == (
        "cannot enforce the network policy (deny; egress *.pypi.org:443): it needs a domain "
        "allowlist (network: domain) and the backend enforces network: cidr"
    )
    assert "ext.cidr cannot enforce the network policy" in decision.reason
    assert why["ext.domain"] is None


def test_a_profile_fixed_to_a_backend_that_cannot_enforce_it_is_not_routed() -> None:
    profile = Profile.model_validate(
        {"id": "profile.vm", "extension": "ext.cidr", "network": {"egress": ["pypi.org"]}}
    )
    with pytest.raises(Rejected) as refused:
        admit_create(
            CreateSandbox(command_id="c1", actor=AGENT, profile=profile.id), profile, ENABLED
        )
    assert refused.value.code == "no_route"
    assert "needs a domain allowlist" in refused.value.reason


def test_packaged_declarations_state_what_each_backend_enforces(packaged: Catalog) -> None:
    levels = {ext_id: d.capabilities.network for ext_id, d in packaged.extensions.items()}
    assert levels == {
        "ext.local": "domain",
        "ext.compose-ssh": "domain",
        "ext.vm-packer": "none",
        "ext.e2b": "domain",
        "ext.daytona": "domain",
        "ext.modal": "domain",
        "ext.saas-stub": "none",
    }
    limits = {e: d.capabilities.network_max_cidrs for e, d in packaged.extensions.items()}
    assert {e: n for e, n in limits.items() if n is not None} == {"ext.daytona": 5}
    ipv4_only = {e for e, d in packaged.extensions.items() if not d.capabilities.network_ipv6}
    assert ipv4_only == {"ext.e2b", "ext.daytona"}  # Modal's spec is silent: it gets IPv6


def test_a_profile_whose_egress_names_domains_is_routed_to_daytona(packaged: Catalog) -> None:
    """ext.daytona sends names in domainAllowList (Daytona's spec has it beside the CIDRs of
    networkAllowList), so its declaration says network: domain; it said cidr before, and a
    profile fixed to Daytona with a name in its egress was refused no_route."""
    egress = ["*.pypi.org:443", "10.0.0.0/8"]
    assert admit_with_egress(packaged, "profile.daytona", egress).extension == "ext.daytona"


SIX_BLOCKS = ["192.0.2.1", "192.0.2.3", "192.0.2.5", "192.0.2.7", "192.0.2.9", "192.0.2.11"]
"""Six addresses no two of which merge into one CIDR block."""


def test_a_policy_of_more_cidr_blocks_than_daytona_takes_is_not_routed_there(
    packaged: Catalog,
) -> None:
    """Daytona's networkAllowList takes at most five CIDR blocks (its docs); its declaration
    says so (network_max_cidrs: 5), so a create whose policy makes six is refused no_route,
    naming the limit and the fix, instead of being routed, held for and refused by Daytona
    (or cut short). Before, it was admitted to ext.daytona."""
    with pytest.raises(Rejected) as refused:
        admit_with_egress(packaged, "profile.daytona", [*SIX_BLOCKS, "*.pypi.org:443"])
    assert refused.value.code == "no_route"
    assert refused.value.reason.startswith(
        "no extension can serve profile.daytona: ext.daytona cannot hold the network policy "
        "(deny; egress 192.0.2.1, 192.0.2.3, 192.0.2.5, 192.0.2.7, 192.0.2.9, 192.0.2.11 and "
        "1 more): its address entries make 6 CIDR blocks and the backend's allowlist takes at "
        "most 5 (network_max_cidrs: 5); cover them with 5 or fewer wider CIDRs, or name them "
        "by domain, or route the profile to another backend"
    )


def test_addresses_that_merge_into_five_blocks_are_routed_to_daytona(packaged: Catalog) -> None:
    merging = ["10.0.0.0/25", "10.0.0.128/25:443", "10.0.0.7", *SIX_BLOCKS[:4], "pypi.org"]
    assert admit_with_egress(packaged, "profile.daytona", merging).extension == "ext.daytona"


def test_a_routed_profile_passes_over_a_backend_whose_allowlist_is_too_short() -> None:
    """The limit is one more eligibility check: the next candidate that can hold it serves,
    and a narrowing create that leaves few enough blocks is routed to the short one again."""
    short = decl("ext.short", "domain", network_max_cidrs=2)
    enabled = {"ext.short": short, "ext.domain": ENABLED["ext.domain"]}
    profile = routed_profile({"egress": SIX_BLOCKS[:3]}, ["ext.short", "ext.domain"])
    decision = rank(profile, enabled, ttl_seconds=60)
    assert decision.chosen == "ext.domain"
    why = {c.extension: c.why_not for c in decision.candidates}
    assert "its address entries make 3 CIDR blocks" in (why["ext.short"] or "")
    narrowed = CreateSandbox(
        command_id="c2",
        actor=AGENT,
        profile=profile.id,
        network=NetworkAsk(default="deny", egress=[*SIX_BLOCKS[:2]]),
    )
    assert admit_create(narrowed, profile, enabled).extension == "ext.short"


@pytest.mark.parametrize(
    ("profile_id", "extension"),
    [("profile.daytona", "ext.daytona"), ("profile.e2b-burst", "ext.e2b")],
)
def test_a_policy_naming_an_ipv6_address_is_not_routed_to_an_ipv4_only_provider(
    packaged: Catalog, profile_id: str, extension: str
) -> None:
    """Daytona's docs: "Use networkAllowList for IPv4 CIDR ranges"; E2B's make deny-all
    denyOut 0.0.0.0/0, IPv4 only. Their declarations say network_ipv6: false, so a policy
    with an IPv6 entry is refused no_route, naming the entry and the fix, instead of being
    routed, held for, and refused by the provider (or its entry dropped). Before, it was
    admitted to either."""
    egress = ["192.0.2.7", "[2001:db8::1]:53/udp", "2001:db8:1::/48", "pypi.org"]
    with pytest.raises(Rejected) as refused:
        admit_with_egress(packaged, profile_id, egress)
    assert refused.value.code == "no_route"
    assert refused.value.reason.startswith(
        f"no extension can serve {profile_id}: {extension} cannot hold the network policy "
        "(deny; egress 192.0.2.7, [2001:db8::1]:53/udp, 2001:db8:1::/48, pypi.org): its "
        "allowlist takes IPv4 addresses only (network_ipv6: false) and the policy names IPv6 "
        "[2001:db8::1]:53/udp, 2001:db8:1::/48; name those destinations by domain or as IPv4, "
        "or route the profile to another backend"
    )
    ipv4 = egress[:1] + egress[3:]
    assert admit_with_egress(packaged, profile_id, ipv4).extension == extension


def test_an_ipv6_policy_passes_an_ipv4_only_backend_over_for_one_that_takes_it() -> None:
    """One more eligibility check: the next candidate serves, and a create that narrows the
    policy to IPv4 is routed to the IPv4-only one again. Left out, network_ipv6 is true."""
    assert ENABLED["ext.domain"].capabilities.network_ipv6 is True
    enabled = {
        "ext.v4": decl("ext.v4", "domain", network_ipv6=False),
        "ext.domain": ENABLED["ext.domain"],
    }
    profile = routed_profile({"egress": ["10.0.0.0/8", "2001:db8::/32"]}, ["ext.v4", "ext.domain"])
    decision = rank(profile, enabled, ttl_seconds=60)
    assert decision.chosen == "ext.domain"
    why = {c.extension: c.why_not for c in decision.candidates}
    assert "the policy names IPv6 2001:db8::/32;" in (why["ext.v4"] or "")
    narrowed = CreateSandbox(
        command_id="c2",
        actor=AGENT,
        profile=profile.id,
        network=NetworkAsk(default="deny", egress=["10.0.0.0/8"]),
    )
    assert admit_create(narrowed, profile, enabled).extension == "ext.v4"
    allow = profile.model_copy(update={"network": Network(default="allow", egress=["::/0"])})
    assert rank(allow, enabled, ttl_seconds=60).chosen == "ext.v4"  # allow lists nothing


def test_an_undeclared_level_is_none() -> None:
    bare = ExtensionDecl.model_validate(
        {
            "id": "ext.x",
            "kind": "saas",
            "entry_point": "m:C",
            "capabilities": {"isolation": ["container"]},
        }
    )
    assert bare.capabilities.network == "none"


# --- narrowing at admission ---------------------------------------------------------------

PROFILE = Profile.model_validate(
    {
        "id": "profile.pypi",
        "route": {"candidates": ["ext.cidr", "ext.domain"]},
        "network": {"egress": ["*.pypi.org:443", "10.0.0.0/8"]},
    }
)


def create(network: NetworkAsk | None, actor: Actor = AGENT) -> CreateSandbox:
    return CreateSandbox(command_id="c1", actor=actor, profile=PROFILE.id, network=network)


def test_without_a_network_the_profile_policy_is_in_force_and_recorded() -> None:
    admitted = admit_create(create(None), PROFILE, ENABLED)
    assert admitted.network == NetworkRecord(
        default="deny", egress=["*.pypi.org:443", "10.0.0.0/8"]
    )
    requested, _routed = decide(SandboxState(sandbox_id=admitted.sandbox_id), admitted, NOW)
    assert requested.network == admitted.network  # type: ignore[union-attr]


def test_a_narrowing_is_in_force_and_routing_weighs_it() -> None:
    """Narrowed to addresses only, the policy needs cidr: the first candidate serves it."""
    asked = NetworkAsk(
        egress=[EgressObject(to="10.1.0.0/16", ports=[22, "8000-8100"], protocol="tcp")]
    )
    admitted = admit_create(create(asked), PROFILE, ENABLED)
    assert admitted.network == NetworkRecord(egress=["10.1.0.0/16:22,8000-8100/tcp"])
    assert admitted.extension == "ext.cidr"
    assert admit_create(create(None), PROFILE, ENABLED).extension == "ext.domain"


def test_a_widening_is_rejected_with_the_entry_that_widens_it() -> None:
    with pytest.raises(Rejected) as refused:
        admit_create(create(NetworkAsk(egress=["pypi.org:443"])), PROFILE, ENABLED)
    assert refused.value.code == "network_widened"
    assert refused.value.reason == (
        "network: egress pypi.org:443 is not within the profile's network policy (deny; egress "
        "*.pypi.org:443, 10.0.0.0/8): no entry of the profile covers pypi.org; a create may "
        "narrow the profile's policy, and only an adm actor may widen it"
    )
    with pytest.raises(Rejected, match="default: allow is wider"):
        admit_create(create(NetworkAsk(default="allow")), PROFILE, ENABLED)


def test_an_adm_actor_may_widen() -> None:
    admitted = admit_create(create(NetworkAsk(default="allow"), ADMIN), PROFILE, ENABLED)
    assert admitted.network == NetworkRecord(default="allow", egress=[])


def test_ready_records_the_policy_in_force() -> None:
    admitted = admit_create(create(NetworkAsk(egress=["files.pypi.org:443"])), PROFILE, ENABLED)
    state = SandboxState(sandbox_id=admitted.sandbox_id)
    for event in decide(state, admitted, NOW):
        state = evolve(state, event)
    for step in (
        StartProvisioning(job_id="j1", worker="w"),
        MarkReady(job_id="j1", reachability={}, warnings=[]),
    ):
        [event] = decide(state, step, NOW)
        state = evolve(state, event)
    assert event.network == NetworkRecord(egress=["files.pypi.org:443"])  # type: ignore[union-attr]
    assert state.network == event.network  # type: ignore[union-attr]


def test_an_older_requested_event_decodes_without_a_policy() -> None:
    state = evolve(
        SandboxState(sandbox_id="old1"),
        msgspec.json.decode(
            b'{"type":"requested","sandbox_id":"old1","command_id":"c","actor":{"type":"agt",'
            b'"id":"a"},"at":"2026-12-01T00:00:00.000Z","profile":"profile.local","profile_version":1}',
            type=SandboxRequested,
        ),
    )
    assert state.network is None


# --- the command on the bus ---------------------------------------------------------------


def command_bytes(network: object) -> bytes:
    return msgspec.json.encode(
        {
            "command_id": "cmd-net-1",
            "actor": {"type": "agt", "id": "a"},
            "profile": "profile.pypi",
            "network": network,
        }
    )


def test_a_create_carries_a_network_in_either_entry_form() -> None:
    command = parse_command(
        "sandboxer.cmd.create",
        command_bytes({"egress": ["pypi.org:443", {"to": "10.0.0.0/8", "ports": [22, "80-81"]}]}),
    )
    assert isinstance(command, CreateSandbox)
    assert command.network is not None


@pytest.mark.parametrize(
    ("network", "code", "says"),
    [
        ({"egress": ["10.1.1.1/8"]}, "invalid_network", "network.egress[0] ('10.1.1.1/8')"),
        ({"egress": [{"to": "x.example", "ports": [70000]}]}, "invalid_network", "port 70000"),
        ({"egress": ["*"]}, "invalid_network", "default: allow"),
        ({"default": "open"}, "invalid_field", "default"),
        ({"egress": [{"to": "x.example", "via": "y"}]}, "invalid_field", "via"),
        ({"egress": ["a.example"] * 300}, "invalid_network", "at most 256"),
    ],
)
def test_a_bad_network_is_rejected_with_a_reason(network: object, code: str, says: str) -> None:
    with pytest.raises(InvalidCommand) as caught:
        parse_command("sandboxer.cmd.create", command_bytes(network))
    assert caught.value.code == code
    assert says in caught.value.reason


def test_packaged_profiles_still_load(packaged: Catalog) -> None:
    for profile_id in packaged.profiles:
        packaged.profile(profile_id).network.policy()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
ENTRY_LIKE = st.one_of(
    st.text(max_size=40),
    st.fixed_dictionaries(
        {"to": st.text(max_size=30)},
        optional={"ports": JSON, "protocol": JSON, "via": JSON},
    ),
    JSON,
)


@settings(max_examples=300)
@given(
    st.one_of(
        JSON,
        st.fixed_dictionaries(
            {}, optional={"default": JSON, "egress": st.lists(ENTRY_LIKE, max_size=5)}
        ),
    )
)
def test_any_network_is_a_create_or_a_reasoned_rejection(network: object) -> None:
    """Whatever a client sends as network, parsing answers a command or InvalidCommand,
    and admission a decision or Rejected: never another exception."""
    refusal: tuple[str, str] | None = None
    try:
        command = parse_command("sandboxer.cmd.create", command_bytes(network))
    except InvalidCommand as refused:
        refusal = (refused.code, refused.reason)
    if refusal is not None:
        assert refusal[0] in {"invalid_field", "invalid_network"}
        assert refusal[1]
        return
    assert isinstance(command, CreateSandbox)
    try:
        admit_create(msgspec.structs.replace(command, profile=PROFILE.id), PROFILE, ENABLED)
    except Rejected as rejected:
        refusal = (rejected.code, rejected.reason)
    assert refusal is None or refusal[0] in {"network_widened", "no_route"}
