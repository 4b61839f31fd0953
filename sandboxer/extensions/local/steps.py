"""Small helpers of ext.local's provisioning steps, kept apart from the backend class.

* :func:`profile_warnings`: what a profile asks for that ext.local cannot
  honour. The backend always errs on the restrictive side (e.g. no network)
  and says so in ``Readiness.warnings`` instead of failing.
* :func:`with_heartbeat`: long steps (copying a repository, a setup
  instruction) heartbeat meanwhile, so the worker's job is not redelivered.
* :func:`redact`: setup output quoted in an error never repeats a secret.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from typing import TypeVar

from sandboxer.config.profile import Profile
from sandboxer.extensions.base import ProvisionRequest

__all__ = ["HEARTBEAT_EVERY", "profile_warnings", "redact", "with_heartbeat"]

T = TypeVar("T")
HEARTBEAT_EVERY = 10.0


async def with_heartbeat(request: ProvisionRequest, step: Awaitable[T]) -> T:
    """Await a long step, heartbeating meanwhile so the job is not redelivered."""
    task = asyncio.ensure_future(step)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=HEARTBEAT_EVERY)
            if done:
                return task.result()
            await request.heartbeat()
    finally:
        if not task.done():
            task.cancel()


def redact(text: str, secrets: Mapping[str, str]) -> str:
    for value in secrets.values():
        if len(value) >= 3:
            text = text.replace(value, "***")
    return text


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
