"""What a profile asks of ext.local: the network it may reach, and what it cannot honour.

The backend always errs on the restrictive side (e.g. no network) and says
so in ``Readiness.warnings`` instead of failing.
"""

from __future__ import annotations

from sandboxer.config.profile import Profile
from sandboxer.extensions.base import ProvisionRequest
from sandboxer.extensions.local.egress_policy import DENY, LocalEgress

__all__ = ["local_egress_for", "profile_warnings"]


def local_egress_for(request: ProvisionRequest) -> LocalEgress:
    """What the sandbox may reach besides its loopback: today always nothing.

    The enforcement (namespace, veth, nftables, name-filtering proxy) is in
    :mod:`.egress`; this is where the profile's compiled network policy
    plugs in. Until then a profile asking for egress gets loopback only and
    the warning below.
    """
    del request
    return DENY


def profile_warnings(profile: Profile, egress: LocalEgress = DENY) -> list[str]:
    """Settings ext.local cannot honour: it always errs on the restrictive side."""
    warnings = []
    if egress.denies_all and (profile.network.default == "allow" or profile.network.egress):
        warnings.append(
            "network egress not provided: ext.local sandboxes have loopback only; "
            "use a backend with an egress allowlist for network access"
        )
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
