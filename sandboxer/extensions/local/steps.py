"""What a profile asks for that ext.local cannot honour.

The backend always errs on the restrictive side (e.g. no network) and says
so in ``Readiness.warnings`` instead of failing.
"""

from __future__ import annotations

from sandboxer.config.profile import Profile

__all__ = ["profile_warnings"]


def profile_warnings(profile: Profile) -> list[str]:
    """Settings ext.local cannot honour: it always errs on the restrictive side."""
    warnings = []
    if profile.network.default == "allow" or profile.network.egress:
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
