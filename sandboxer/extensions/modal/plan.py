"""What a Modal create asks for, from the profile and our TTL (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sandboxer.config.profile import Profile
from sandboxer.durations import parse_duration
from sandboxer.errors import ConfigError, InvalidInput
from sandboxer.extensions.base import ProvisionRequest
from sandboxer.extensions.network_fields import modal_options, port_warnings
from sandboxer.ids import SANDBOX_ID_RULE, is_valid_sandbox_id

__all__ = [
    "MAX_TIMEOUT_SECONDS",
    "checked",
    "image_of",
    "network_options",
    "network_warnings",
    "provider_timeout",
]

MAX_TIMEOUT_SECONDS = 24 * 60 * 60
"""Modal ends any sandbox after at most 24 hours."""
MIN_TIMEOUT_SECONDS = 60


def provider_timeout(request: ProvisionRequest, margin: float) -> tuple[int, list[str]]:
    """Modal's own timeout for the sandbox, a backstop against leaks within Modal's limit.

    Modal cannot move a running sandbox's timeout, and ``extend_ttl`` may move our
    expiry up to the sandbox's ``ttl.max``: so the backstop is the later of our
    expiry and ``ttl.max`` from now, plus a margin. sandboxer expires the sandbox
    itself on time; Modal ends it only if sandboxer could not. The ``ttl.max`` is the
    one the sandbox's create recorded, as its expiry is: the profile's own (edited
    since, say) only when nothing was recorded.
    """
    if request.expires_at:
        expires = datetime.fromisoformat(request.expires_at.replace("Z", "+00:00"))
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        left = (expires - datetime.now(UTC)) / timedelta(seconds=1)
    else:
        left = parse_duration(request.profile.ttl.default)
    ttl_max = request.ttl_max_seconds
    if ttl_max is None:
        ttl_max = parse_duration(request.profile.ttl.max)
    longest = max(left, ttl_max)
    wanted = int(longest + margin)
    if left + margin > MAX_TIMEOUT_SECONDS:
        return MAX_TIMEOUT_SECONDS, [
            "Modal ends a sandbox after 24 hours at most: it will end then, before its TTL, "
            "and cannot be extended past that"
        ]
    if longest > MAX_TIMEOUT_SECONDS:
        return MAX_TIMEOUT_SECONDS, [
            "Modal ends a sandbox after 24 hours at most: extend_ttl cannot keep it "
            "longer, whatever the profile's ttl.max allows"
        ]
    return min(max(wanted, MIN_TIMEOUT_SECONDS), MAX_TIMEOUT_SECONDS), []


def checked(sandbox_id: str) -> str:
    if not is_valid_sandbox_id(sandbox_id):
        raise InvalidInput(
            f"invalid sandbox id {sandbox_id!r}: expected {SANDBOX_ID_RULE}",
            sandbox_id=None,
        )
    return sandbox_id


def image_of(profile: Profile) -> str:
    if not profile.image:
        raise ConfigError(
            f"profile {profile.id} has no image: ext.modal starts sandboxes from a registry image "
            "(set `image: python:3.12-slim`, say)",
        )
    return profile.image


def network_options(profile: Profile) -> dict[str, Any]:
    """Modal's network arguments for the profile's policy (docs/network.md)."""
    return modal_options(profile.network.policy())


def network_warnings(profile: Profile) -> list[str]:
    return port_warnings("Modal", profile.network.policy())
