"""One network policy, compiled for each hosted provider: the provider's double, which holds
a create to its spec, saw exactly the compiled fields (docs/network.md)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandboxer.config.catalog import Catalog
from sandboxer.config.extension_decl import ExtensionDecl
from sandboxer.config.network_policy import parse_policy
from sandboxer.config.settings import Settings
from sandboxer.errors import CommandFailed, InvalidInput
from sandboxer.extensions.base import ProvisionRequest, Readiness
from sandboxer.extensions.daytona.backend import DaytonaExtension
from sandboxer.extensions.e2b.backend import E2bExtension
from sandboxer.extensions.modal.backend import ModalExtension
from tests.doubles.daytona_double import DaytonaServed
from tests.doubles.e2b_double import ServedE2b
from tests.doubles.modal_double import ModalDouble
from tests.integration.conftest import Service, start_service

pytestmark = pytest.mark.integration

POLICIES: dict[str, dict[str, Any]] = {
    "allow": {"default": "allow"},
    "deny": {"default": "deny"},
    "cidr": {"egress": ["10.1.2.0/24:443", "192.0.2.7", "198.51.100.53:53/udp"]},
    "domain": {"egress": ["*.pypi.org:443", "10.0.0.0/8", {"to": "files.example.org"}]},
    "names": {"egress": ["pypi.org", "*.pythonhosted.org:443/tcp"]},
    "ipv6": {"egress": ["[2001:db8::1]:53/udp", "2001:db8:1::/48", "192.0.2.7"]},
}
"""``ipv6`` only for Modal: Daytona's and E2B's allowlists take IPv4 (their docs)."""
ESSENTIAL = (
    "network: Daytona keeps its essential services (package registries, container registries, "
    "Git repositories, CDNs, platform services, system package managers) reachable under any "
    "policy, deny included; on a tier 1 or 2 organisation Daytona's own restrictions also take "
    "precedence over the policy's allowlist",
)
"""Daytona's warning under deny or an allowlist (its Network Limits page)."""
PORTS_DROPPED = {
    "cidr": "10.1.2.0/24:443, 198.51.100.53:53/udp",
    "domain": "*.pypi.org:443",
    "names": "*.pythonhosted.org:443/tcp",
    "ipv6": "[2001:db8::1]:53/udp",
}


def request(profile_id: str, sandbox_id: str, policy: str) -> ProvisionRequest:
    profile = Catalog.load().profile(profile_id)
    return ProvisionRequest(
        sandbox_id=sandbox_id,
        profile=profile.with_network(parse_policy(POLICIES[policy])),
        inputs={},
        project="proj1",
    )


def assert_port_warning(readiness: Readiness, provider: str, policy: str) -> None:
    said = [w for w in readiness.warnings if w.startswith("network:") and w not in ESSENTIAL]
    if policy in PORTS_DROPPED:
        assert said == [
            f"network: {provider} allows egress by destination, not by port or protocol: "
            f"{PORTS_DROPPED[policy]} reach every port of their destination"
        ]
    else:
        assert said == []


# --- E2B ----------------------------------------------------------------------------------

E2B_FIELDS: dict[str, dict[str, Any]] = {
    "allow": {},
    "deny": {"allow_internet_access": False},
    "cidr": {
        "allow_internet_access": False,
        "network": {"allowOut": ["10.1.2.0/24", "192.0.2.7", "198.51.100.53"]},
    },
    "domain": {
        "allow_internet_access": False,
        "network": {"allowOut": ["*.pypi.org", "10.0.0.0/8", "files.example.org"]},
    },
    "names": {
        "allow_internet_access": False,
        "network": {"allowOut": ["pypi.org", "*.pythonhosted.org"]},
    },
}


@pytest.fixture
async def e2b(e2b_double: ServedE2b) -> AsyncIterator[E2bExtension]:
    extension = E2bExtension(
        {"api_url": e2b_double.url, "api_key": e2b_double.api_key, "retry_budget": 5}
    )
    yield extension
    await extension.aclose()


@pytest.mark.parametrize("policy", list(E2B_FIELDS))
async def test_e2b_gets_exactly_the_compiled_policy(
    e2b: E2bExtension, e2b_double: ServedE2b, policy: str
) -> None:
    made = request("profile.e2b-burst", f"e2bnet{policy[:4]}1", policy)
    await e2b.provision(made)
    readiness = await e2b.wait_ready(made)
    [record] = e2b_double.double.live()
    assert record.network_fields == E2B_FIELDS[policy]
    assert_port_warning(readiness, "E2B", policy)
    await e2b.teardown(made.sandbox_id)


# --- Daytona ------------------------------------------------------------------------------

DAYTONA_FIELDS: dict[str, dict[str, Any]] = {
    "allow": {},
    "deny": {"networkBlockAll": True},
    "cidr": {"networkAllowList": "10.1.2.0/24,192.0.2.7/32,198.51.100.53/32"},
    "domain": {"networkAllowList": "10.0.0.0/8", "domainAllowList": "*.pypi.org,files.example.org"},
    "names": {"domainAllowList": "pypi.org,*.pythonhosted.org"},
}


@pytest.fixture
async def daytona(daytona_double: DaytonaServed) -> AsyncIterator[DaytonaExtension]:
    decl = Catalog.load().extensions_enabled()["ext.daytona"]
    settings = {
        "api_url": daytona_double.api_url,
        "api_key": daytona_double.key,
        "poll_interval": 0.02,
        "ready_timeout": 5,
        "request_timeout": 2,
    }
    decl = decl.model_copy(update={"settings": settings})
    extension = DaytonaExtension.from_declaration(
        decl, Settings(home=Path("/nonexistent"), nats_urls=(), nats_server=None, ack_wait=5.0)
    )
    yield extension
    await extension.aclose()


@pytest.mark.parametrize("policy", list(DAYTONA_FIELDS))
async def test_daytona_gets_exactly_the_compiled_policy(
    daytona: DaytonaExtension, daytona_double: DaytonaServed, policy: str
) -> None:
    """Also: under deny or an allowlist the ready warnings say Daytona keeps its essential
    services reachable whatever the policy (its docs); they said nothing before."""
    made = request("profile.daytona", f"dtnet{policy[:4]}01", policy)
    await daytona.provision(made)
    readiness = await daytona.wait_ready(made)
    [record] = daytona_double.double.live()
    assert record.network_fields == DAYTONA_FIELDS[policy]
    assert_port_warning(readiness, "Daytona", policy)
    essential = [w for w in readiness.warnings if w in ESSENTIAL]
    assert essential == ([] if policy == "allow" else list(ESSENTIAL))
    await daytona.teardown(made.sandbox_id)


SIX_BLOCKS = ["192.0.2.1", "192.0.2.3", "192.0.2.5", "192.0.2.7", "192.0.2.9", "192.0.2.11"]
"""Six addresses no two of which merge into one CIDR block: Daytona takes at most five."""


async def test_daytona_merges_addresses_into_the_fewest_cidr_blocks(
    daytona: DaytonaExtension, daytona_double: DaytonaServed
) -> None:
    """Seven address entries that cover five blocks fit Daytona's five: the double (which
    refuses a sixth block) gets the blocks, each address covered once."""
    egress = ["10.0.0.0/25", "10.0.0.128/25", "10.0.0.7:443", *SIX_BLOCKS[:4]]
    profile = Catalog.load().profile("profile.daytona")
    made = ProvisionRequest(
        sandbox_id="dtnetmerge01",
        profile=profile.with_network(parse_policy({"egress": egress})),
        inputs={},
        project="proj1",
    )
    await daytona.provision(made)
    await daytona.wait_ready(made)
    [record] = daytona_double.double.live()
    assert record.network_fields == {
        "networkAllowList": "10.0.0.0/24,192.0.2.1/32,192.0.2.3/32,192.0.2.5/32,192.0.2.7/32"
    }
    await daytona.teardown(made.sandbox_id)


async def test_daytona_s_double_refuses_a_sixth_cidr_block(daytona_double: DaytonaServed) -> None:
    """Daytona's docs: networkAllowList "accepts up to 5 CIDR network blocks"; the double,
    standing in for it, answers 400 past five (it took any number before)."""
    headers = {"Authorization": f"Bearer {daytona_double.key}"}
    async with httpx.AsyncClient(base_url=daytona_double.api_url, headers=headers) as http:
        for count, status in ((5, 201), (6, 400)):
            blocks = ",".join(f"{a}/32" for a in SIX_BLOCKS[:count])
            body = {"name": f"blocks{count}", "snapshot": "s", "networkAllowList": blocks}
            answer = await http.post("/sandbox", json=body)
            assert answer.status_code == status, answer.text
    assert "up to 5 CIDR blocks" in answer.json()["message"]
    assert daytona_double.double.creates == 1


async def test_a_declaration_without_the_limit_still_sends_daytona_no_sixth_block(
    daytona: DaytonaExtension, daytona_double: DaytonaServed
) -> None:
    """A copy of the declaration made before network_max_cidrs lets routing send a policy
    of six blocks here: ext.daytona refuses it before asking Daytona, naming the limit and
    the fix, and nothing is made."""
    profile = Catalog.load().profile("profile.daytona")
    made = ProvisionRequest(
        sandbox_id="dtnetsix0001",
        profile=profile.with_network(parse_policy({"egress": SIX_BLOCKS})),
        inputs={},
        project="proj1",
    )
    with pytest.raises(InvalidInput) as refused:
        await daytona.provision(made)
    assert "takes at most 5 CIDR blocks" in refused.value.message
    assert "network_max_cidrs: 5" in refused.value.message
    assert daytona_double.double.creates == 0


@contextlib.asynccontextmanager
async def daytona_service(
    nats_url: str, home: Path, daytona_double: DaytonaServed, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Service]:
    """A funded service whose one backend is ext.daytona, on the Daytona double."""
    monkeypatch.setenv("DAYTONA_API_URL", daytona_double.api_url)
    monkeypatch.setenv("DAYTONA_API_KEY", daytona_double.key)
    service = await start_service(home, nats_url, roles=["control", "projector", "ext.daytona"])
    try:
        await service.fund()
        yield service
    finally:
        await service.client.close()
        await service.shutdown()


async def no_route_reason(
    service: Service, daytona_double: DaytonaServed, network: dict[str, Any]
) -> str:
    """The reason a create of profile.daytona narrowed to ``network`` is rejected no_route,
    with nothing held and no provider call made."""
    with pytest.raises(CommandFailed) as refused:
        await service.client.create("profile.daytona", ttl="10m", network=network)
    assert refused.value.event["code"] == "no_route", refused.value.event
    assert daytona_double.double.creates == 0
    [account] = await service.client.credits("default")
    assert account["reserved"] == 0
    return str(refused.value.event["reason"])


async def test_a_create_with_more_cidr_blocks_than_daytona_takes_is_not_routed_there(
    nats_server: Any, home: Path, daytona_double: DaytonaServed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the bus: a create of profile.daytona (fixed to ext.daytona) whose policy makes
    six CIDR blocks is rejected no_route, naming the limit and the fix, before any hold or
    provider call. Before, it was routed, held credits and sent all six, which Daytona (and
    now its double) refuses: a failed sandbox."""
    async with daytona_service(nats_server.url, home, daytona_double, monkeypatch) as service:
        network = {"egress": [*SIX_BLOCKS, "pypi.org"]}
        reason = await no_route_reason(service, daytona_double, network)
    assert "its address entries make 6 CIDR blocks" in reason
    assert "allowlist takes at most 5 (network_max_cidrs: 5)" in reason
    assert "wider CIDRs" in reason


async def test_daytona_s_double_refuses_an_ipv6_block(daytona_double: DaytonaServed) -> None:
    """Daytona's docs: "Use networkAllowList for IPv4 CIDR ranges"; the double, standing in
    for it, answers 400 to an IPv6 block (it took one before)."""
    headers = {"Authorization": f"Bearer {daytona_double.key}"}
    async with httpx.AsyncClient(base_url=daytona_double.api_url, headers=headers) as http:
        for name, blocks, status in (
            ("v4", "192.0.2.7/32", 201),
            ("v6", "192.0.2.7/32,2001:db8::1/128", 400),
        ):
            body = {"name": name, "snapshot": "s", "networkAllowList": blocks}
            answer = await http.post("/sandbox", json=body)
            assert answer.status_code == status, answer.text
    assert "IPv4 CIDR ranges, not 2001:db8::1/128" in answer.json()["message"]
    assert daytona_double.double.creates == 1


async def test_a_declaration_without_network_ipv6_still_sends_no_ipv6_to_daytona_or_e2b(
    daytona: DaytonaExtension,
    daytona_double: DaytonaServed,
    e2b: E2bExtension,
    e2b_double: ServedE2b,
) -> None:
    """A copy of a declaration made before network_ipv6 lets routing send a policy naming
    an IPv6 address: ext.daytona and ext.e2b refuse it before asking the provider, naming
    the entry and the fix, and nothing is made. Before, both sent it."""
    for profile_id, extension, sandbox_id in (
        ("profile.daytona", daytona, "dtnetipv601"),
        ("profile.e2b-burst", e2b, "e2bnetipv61"),
    ):
        made = request(profile_id, sandbox_id, "ipv6")
        with pytest.raises(InvalidInput) as refused:
            await extension.provision(made)
        assert "takes IPv4 addresses only" in refused.value.message
        assert "names IPv6 [2001:db8::1]:53/udp, 2001:db8:1::/48" in refused.value.message
        assert "network_ipv6: false" in refused.value.message
    assert daytona_double.double.creates == 0
    assert e2b_double.double.made == []


async def test_a_create_naming_an_ipv6_address_is_not_routed_to_daytona(
    nats_server: Any, home: Path, daytona_double: DaytonaServed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the bus: a create of profile.daytona (fixed to ext.daytona) whose policy names
    an IPv6 address is rejected no_route, naming the entry and the fix, before any hold or
    provider call. Before, it was routed, held credits and sent 2001:db8::1/128, which
    Daytona (whose allowlist takes IPv4 CIDR ranges), and now its double, refuses: a failed
    sandbox."""
    async with daytona_service(nats_server.url, home, daytona_double, monkeypatch) as service:
        network = {"egress": ["192.0.2.7", "2001:db8::1", "pypi.org"]}
        reason = await no_route_reason(service, daytona_double, network)
    assert "ext.daytona cannot hold the network policy" in reason
    assert "takes IPv4 addresses only (network_ipv6: false)" in reason
    assert "names IPv6 2001:db8::1; name those destinations by domain or as IPv4" in reason


async def test_a_create_naming_domains_is_routed_to_daytona_and_reaches_it(
    nats_server: Any, home: Path, daytona_double: DaytonaServed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the bus: a create of profile.daytona (fixed to ext.daytona) that narrows its
    policy to names is routed there and Daytona gets them in domainAllowList. Before,
    ext.daytona declared network: cidr and the create was rejected no_route."""
    async with daytona_service(nats_server.url, home, daytona_double, monkeypatch) as service:
        network = {"egress": ["*.pypi.org:443", "pypi.org", "192.0.2.7"]}
        ready = await service.client.create("profile.daytona", ttl="10m", network=network)
        assert ready["reachability"]["kind"] == "daytona"  # the ready event, from ext.daytona
        assert ready["network"] == {"default": "deny", "egress": network["egress"]}
        assert ready["warnings"] == [
            "network: Daytona allows egress by destination, not by port or protocol: "
            "*.pypi.org:443 reach every port of their destination",
            *ESSENTIAL,
        ]
        [record] = daytona_double.double.live()
        assert record.network_fields == {
            "networkAllowList": "192.0.2.7/32",
            "domainAllowList": "*.pypi.org,pypi.org",
        }
        await service.client.destroy(ready["sandbox_id"])


# --- Modal --------------------------------------------------------------------------------

MODAL_FIELDS: dict[str, dict[str, Any]] = {
    "allow": {"type": "OPEN"},
    "deny": {"type": "BLOCKED"},
    "cidr": {
        "type": "ALLOWLIST",
        "allowed_cidrs": ["10.1.2.0/24", "192.0.2.7/32", "198.51.100.53/32"],
        "allowed_domains": [],
    },
    "ipv6": {  # Modal's spec says nothing of the family: IPv6 is sent as given
        "type": "ALLOWLIST",
        "allowed_cidrs": ["2001:db8::1/128", "2001:db8:1::/48", "192.0.2.7/32"],
        "allowed_domains": [],
    },
    "domain": {
        "type": "ALLOWLIST",
        "allowed_cidrs": ["10.0.0.0/8"],
        "allowed_domains": ["*.pypi.org", "files.example.org"],
    },
    "names": {
        "type": "ALLOWLIST",
        "allowed_cidrs": [],
        "allowed_domains": ["pypi.org", "*.pythonhosted.org"],
    },
}


@pytest.mark.parametrize("policy", list(POLICIES))
async def test_modal_gets_exactly_the_compiled_policy(
    modal_double: ModalDouble, modal_extensions: Callable[..., ModalExtension], policy: str
) -> None:
    ext = modal_extensions()
    sandbox_id = f"mdnet{policy[:4]}01"
    made = request("profile.modal-gpu", sandbox_id, policy)
    await ext.provision(made)
    readiness = await ext.wait_ready(made)
    [record] = modal_double.running_for(sandbox_id)
    assert record.network_access == MODAL_FIELDS[policy]
    assert_port_warning(readiness, "Modal", policy)
    await ext.teardown(sandbox_id)


def test_every_hosted_declaration_claims_what_its_compiler_holds() -> None:
    """The table of docs/network.md, as declared: the compilers above hold exactly these."""
    enabled: dict[str, ExtensionDecl] = Catalog.load().extensions
    assert {
        e: enabled[e].capabilities.network for e in ("ext.e2b", "ext.daytona", "ext.modal")
    } == {
        "ext.e2b": "domain",
        "ext.daytona": "domain",
        "ext.modal": "domain",
    }
