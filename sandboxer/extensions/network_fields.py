"""The one network policy compiled into each hosted provider's create fields (pure).

Routing only sends a profile to a backend whose declared ``capabilities.network``
covers what its policy needs (docs/network.md#enforcement). E2B, Daytona and Modal
each take addresses, CIDRs, names and ``*.`` wildcards (``network: domain``), so
every policy compiles for each of them.

No provider filters by port or protocol: an entry's ports and protocol are
dropped, and the ``ready`` event's warnings say which entries were widened so.
"""

from __future__ import annotations

from typing import Any

from sandboxer.config.network_policy import Egress, NetworkPolicy

__all__ = ["daytona_fields", "e2b_fields", "modal_options", "port_warnings"]


def port_warnings(provider: str, policy: NetworkPolicy) -> list[str]:
    """What of the policy the provider cannot hold because it allows by destination only."""
    narrowed = policy.limits_ports()
    if not narrowed:
        return []
    return [
        f"network: {provider} allows egress by destination, not by port or protocol: "
        f"{', '.join(narrowed)} reach every port of their destination"
    ]


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
    entries as a comma list of CIDRs) and ``domainAllowList`` (the names and ``*.``
    wildcards as a comma list, as Daytona's spec writes ``example.com,*.daytona.io``),
    each sent when the policy has such entries. Every name the policy language admits
    is one Daytona's list can carry (lower-case ASCII labels, no comma), so none is refused."""
    if policy.default == "allow":
        return {}
    if not policy.egress:
        return {"networkBlockAll": True}
    fields: dict[str, Any] = {}
    cidrs = _unique([_cidr(entry) for entry in policy.addresses])
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
