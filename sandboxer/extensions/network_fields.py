"""The one network policy compiled into each hosted provider's create fields (pure).

Routing only sends a profile to a backend whose declared ``capabilities.network``
covers what its policy needs (docs/network.md#enforcement). E2B, Daytona and Modal
each take addresses, CIDRs, names and ``*.`` wildcards (``network: domain``), so
every policy compiles for each of them.

No provider filters by port or protocol: an entry's ports and protocol are
dropped, and the ``ready`` event's warnings say which entries were widened so.

Daytona's allowlist takes at most :data:`DAYTONA_MAX_CIDRS` blocks (its declaration says so
for routing), and Daytona keeps its "essential services" reachable under any policy (a
``ready`` warning says so): both from its Network Limits (Firewall) page, not its spec.

Daytona's and E2B's address allowlists take IPv4 only: Daytona's docs say "use
networkAllowList for IPv4 CIDR ranges"; E2B's spec and docs make "deny all traffic"
``denyOut: 0.0.0.0/0``, all of IPv4 and nothing else. Their declarations say
``network_ipv6: false`` for routing, and :func:`ipv4_only_unheld` refuses such a policy
before the create. Modal's spec says nothing of the family, so Modal gets IPv6 as given.
"""

from __future__ import annotations

from typing import Any

from sandboxer.config.network_policy import Egress, NetworkPolicy, listing

__all__ = [
    "DAYTONA_MAX_CIDRS",
    "daytona_blocks_unheld",
    "daytona_fields",
    "daytona_warnings",
    "e2b_fields",
    "ipv4_only_unheld",
    "modal_options",
    "port_warnings",
]

DAYTONA_MAX_CIDRS = 5
"""Daytona's docs: "networkAllowList accepts up to 5 CIDR network blocks"."""


def port_warnings(provider: str, policy: NetworkPolicy) -> list[str]:
    """What of the policy the provider cannot hold because it allows by destination only."""
    narrowed = policy.limits_ports()
    if not narrowed:
        return []
    return [
        f"network: {provider} allows egress by destination, not by port or protocol: "
        f"{', '.join(narrowed)} reach every port of their destination"
    ]


def daytona_warnings(policy: NetworkPolicy) -> list[str]:
    """What Daytona lets through whatever the policy: its docs say "essential services are
    available on all tiers", and that a tier 1 or 2 organisation's own restrictions take
    precedence over a sandbox's settings. Nothing to say under ``allow``."""
    if policy.default == "allow":
        return []
    return [
        "network: Daytona keeps its essential services (package registries, container "
        "registries, Git repositories, CDNs, platform services, system package managers) "
        "reachable under any policy, deny included; on a tier 1 or 2 organisation Daytona's "
        "own restrictions also take precedence over the policy's allowlist"
    ]


def daytona_blocks_unheld(policy: NetworkPolicy) -> str | None:
    """Why Daytona's allowlist cannot hold the policy's addresses, or None. Routing keeps
    such a policy away (the declaration's ``network_max_cidrs``); this catches a declaration
    that does not say, before Daytona refuses the create (or cuts the list)."""
    blocks = policy.address_blocks()
    if len(blocks) <= DAYTONA_MAX_CIDRS:
        return None
    return (
        f"Daytona's networkAllowList takes at most {DAYTONA_MAX_CIDRS} CIDR blocks and the "
        f"network policy's address entries make {len(blocks)}: cover them with "
        f"{DAYTONA_MAX_CIDRS} or fewer wider CIDRs or name them by domain, or route the "
        f"profile elsewhere (and give the declaration network_max_cidrs: {DAYTONA_MAX_CIDRS}, "
        "so routing does)"
    )


def ipv4_only_unheld(allowlist: str, policy: NetworkPolicy) -> str | None:
    """Why ``allowlist`` (a provider's, IPv4 only) cannot hold the policy's IPv6 entries, or
    None. Routing keeps such a policy away (the declaration's ``network_ipv6: false``); this
    catches a declaration that does not say, before the provider refuses the create or
    drops the entry."""
    v6 = policy.ipv6_addresses()
    if not v6:
        return None
    return (
        f"{allowlist} takes IPv4 addresses only and the network policy names IPv6 "
        f"{listing(v6)}: name those destinations by domain or as IPv4, or route the profile "
        "elsewhere (and give the declaration network_ipv6: false, so routing does)"
    )


def _cidr(entry: Egress) -> str:
    """An address entry as a CIDR, as Daytona and Modal want it (``10.0.0.1/32``)."""
    network = entry.network
    assert network is not None
    return network.with_prefixlen


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def e2b_fields(policy: NetworkPolicy) -> dict[str, Any]:
    """``allow_internet_access`` and ``network.allowOut`` (addresses, CIDRs, names and
    ``*.`` wildcards: E2B takes all of them; its allowed entries win over the deny)."""
    if policy.default == "allow":
        return {}
    fields: dict[str, Any] = {"allow_internet_access": False}
    if policy.egress:
        fields["network"] = {"allowOut": _unique([entry.to for entry in policy.egress])}
    return fields


def daytona_fields(policy: NetworkPolicy) -> dict[str, Any]:
    """``networkBlockAll`` for deny; an allowlist is ``networkAllowList`` (the address
    entries as a comma list of CIDRs, merged into the fewest blocks, as Daytona takes at
    most five) and ``domainAllowList`` (the names and ``*.`` wildcards as a comma list, as
    Daytona's spec writes ``example.com,*.daytona.io``), each sent when the policy has such
    entries. Every name the policy language admits is one Daytona's list can carry
    (lower-case ASCII labels, no comma), so none is refused."""
    if policy.default == "allow":
        return {}
    if not policy.egress:
        return {"networkBlockAll": True}
    fields: dict[str, Any] = {}
    cidrs = [block.with_prefixlen for block in policy.address_blocks()]
    names = _unique([entry.to for entry in policy.domains])
    if cidrs:
        fields["networkAllowList"] = ",".join(cidrs)
    if names:
        fields["domainAllowList"] = ",".join(names)
    return fields


def modal_options(policy: NetworkPolicy) -> dict[str, Any]:
    """``block_network`` for deny, else the outbound CIDR and domain allowlists (Modal's
    ``NetworkAccess`` of type ALLOWLIST; its domain list takes ``*.`` wildcards)."""
    if policy.default == "allow":
        return {}
    if not policy.egress:
        return {"block_network": True}
    options: dict[str, Any] = {}
    cidrs = _unique([_cidr(entry) for entry in policy.addresses])
    names = _unique([entry.to for entry in policy.domains])
    if cidrs:
        options["outbound_cidr_allowlist"] = cidrs
    if names:
        options["outbound_domain_allowlist"] = names
    return options
