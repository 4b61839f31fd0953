"""What a profile asks of ext.local: the network it may reach, and what it cannot honour.

The backend always errs on the restrictive side (e.g. no network) and says
so in ``Readiness.warnings`` instead of failing.
"""

from __future__ import annotations

from sandboxer.config.network_policy import NetworkPolicy
from sandboxer.config.profile import Profile
from sandboxer.extensions.base import ProvisionRequest
from sandboxer.extensions.local.egress_policy import AddressRule, DomainRule, LocalEgress

__all__ = ["compile_policy", "local_egress_for", "profile_warnings"]


def local_egress_for(request: ProvisionRequest) -> LocalEgress:
    """What the sandbox may reach besides its loopback: the policy in force, compiled.

    The extension worker hands over the profile with the policy ``requested``
    recorded (a create's narrowing included), so ``request.profile.network``
    is the policy in force, never a later edit of the profile.
    """
    return compile_policy(request.profile.network.policy())


def compile_policy(policy: NetworkPolicy) -> LocalEgress:
    """The profile's network policy as ext.local enforces it, and what it cannot enforce.

    Address entries become nftables rules, name entries go through the
    sandbox's proxy (TCP only: HTTP and TLS). What cannot be enforced is left
    out, never widened, and named in ``warnings``.

    A name entry's UDP is never carried: a name is judged by the proxy from the
    HTTP Host or the TLS name, which UDP does not carry, and no DNS is offered
    inside. Letting the name's current addresses through instead would allow
    whatever else shares them and miss its DNS changes (docs/network.md), so a
    name entry without a protocol gets its TCP half, and a warning says so.
    """
    if policy.default == "allow":
        return LocalEgress(allow_all=True)
    addresses: list[AddressRule] = []
    domains: list[DomainRule] = []
    warnings: list[str] = []
    tcp_only: list[str] = []
    for entry in policy.egress:
        network = entry.network
        if network is None:
            if entry.protocol == "udp":
                warnings.append(
                    f"egress {entry.compact()} not provided: ext.local reaches names only "
                    "through its HTTP/TLS proxy (TCP)"
                )
                continue
            if entry.protocol is None:
                tcp_only.append(entry.compact())
            domains.append(DomainRule(entry.to, entry.port_pairs))
        elif network.is_link_local:
            warnings.append(
                f"egress {entry.compact()} not provided: ext.local never lets a sandbox "
                "reach link-local addresses (other sandboxes' links, cloud metadata)"
            )
        else:
            addresses.append(AddressRule(network, entry.port_pairs, entry.protocol))
    if tcp_only:
        warnings.append(
            f"egress {', '.join(tcp_only)}: UDP not provided, TCP only: ext.local reaches "
            "names only through its HTTP/TLS proxy (no DNS inside); write such an entry "
            f"with /tcp ({tcp_only[0]}/tcp) to ask for what is enforced"
        )
    return LocalEgress(addresses=tuple(addresses), domains=tuple(domains), warnings=tuple(warnings))


def profile_warnings(profile: Profile) -> list[str]:
    """Settings ext.local cannot honour: it always errs on the restrictive side.

    What the network policy asks and ext.local leaves out is said by
    :func:`compile_policy` (and, without root, by the backend).
    """
    warnings = []
    if profile.resources.disk_mb is not None:
        warnings.append(
            "disk limit not enforced: ext.local does not cap the workspace size "
            f"({profile.resources.disk_mb} MB requested)"
        )
    if profile.resources.gpu is not None:
        warnings.append(f"gpu {profile.resources.gpu!r} not provided: ext.local exposes no devices")
    if profile.workspace.mode == "persistent":
        warnings.append(
            "persistent workspace not kept: ext.local deletes the workspace at teardown"
        )
    return warnings
