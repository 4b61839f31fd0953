"""What ext.daytona asks Daytona for, worked out without I/O: the create body, the provider's
own clean-up intervals, what each sandbox state means to us, and which declaration made a
sandbox (its labels).

Every sandbox is labelled with the declaration that made it (``sandboxer_extension``:
``ext.daytona``, ``ext.daytona-eu``), so two declarations on one Daytona organization
each list and delete only their own. Before that, every sandbox said ``ext.daytona``
whatever its declaration; a sandbox labelled since also carries :data:`LABELS_LABEL`, and
one without it that says ``ext.daytona`` is one of those older ones: any declaration's
(:func:`maker` gives None), for the log to say whose.

Each sandbox also names the provisioning attempt that made it (``sandboxer_attempt``,
:mod:`sandboxer.hosted.attempt_fence`): one made before that label counts as an earlier
attempt's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sandboxer.config.profile import Profile
from sandboxer.domain.found import Frozen
from sandboxer.durations import parse_duration
from sandboxer.errors import InvalidInput
from sandboxer.extensions.daytona.config import EXTENSION_ID
from sandboxer.extensions.network_fields import (
    daytona_blocks_unheld,
    daytona_fields,
    daytona_warnings,
    ipv4_only_unheld,
    port_warnings,
)
from sandboxer.hosted.attempt_fence import MadeBy
from sandboxer.hosted.labels import EXTENSION_LABEL, labels_for
from sandboxer.hosted.labels import maker as labels_maker

__all__ = [
    "BACKEND_LABEL",
    "FAILED_STATES",
    "FROZEN_BY_STATE",
    "GONE_STATES",
    "IMAGE_PREFIX",
    "LABELS_LABEL",
    "LABELS_VERSION",
    "OLD_MAKER",
    "CreatePlan",
    "auto_stop_minutes",
    "is_alive",
    "maker",
    "our_labels",
    "plan_create",
    "provider_name",
]

BACKEND_LABEL = EXTENSION_LABEL
"""The label naming the declaration that made the sandbox: Daytona filters labels by key
*and* value, so listing "everything of this declaration's" asks for it."""

LABELS_LABEL = "sandboxer_labels"
LABELS_VERSION = "2"
"""On every sandbox made since :data:`BACKEND_LABEL` names the declaration: it tells ours
from one an older sandboxer made, whose label said :data:`OLD_MAKER` whatever its
declaration (version 1, which had no such label)."""

OLD_MAKER = EXTENSION_ID
"""What :data:`BACKEND_LABEL` said on every sandbox made before it named the declaration."""

IMAGE_PREFIX = "image:"
"""``image: image:python:3.12-slim`` builds from a container image (resources apply);
any other value names a Daytona snapshot (which fixes the resources itself)."""

FAILED_STATES = frozenset({"error", "build_failed"})
GONE_STATES = frozenset({"destroyed", "destroying"})
FROZEN_BY_STATE: dict[str, Frozen] = {"started": "none", "stopped": "all", "archived": "all"}
"""How much of a sandbox in each settled state a pause (a stop) holds; a state on its way
(``starting``, ``stopping``, ``archiving``...) is not judged: Daytona is moving it."""

_GPU_TYPES = ("H100", "RTX-PRO-6000")
"""The spec's GpuType values."""
_IMAGE_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$")


def provider_name(sandbox_id: str) -> str:
    """Daytona's name for our sandbox: unique per organization, so a lookup by name is
    immediate (the list is only eventually consistent) and a duplicate create is refused."""
    return f"sandboxer-{sandbox_id}"


def our_labels(
    sandbox_id: str, project: str | None, extension: str, made_by: MadeBy | None = None
) -> dict[str, str]:
    """The labels of a sandbox the declaration ``extension`` makes; with ``made_by``, the
    provisioning attempt that makes it too."""
    labels = labels_for(sandbox_id, project, extension, made_by)
    return {**labels, LABELS_LABEL: LABELS_VERSION}


def maker(labels: Mapping[str, str]) -> str | None:
    """The declaration that made the sandbox; None when its labels do not say: made before
    they did (``ext.daytona`` without :data:`LABELS_LABEL`, whichever declaration made it),
    or carrying no :data:`BACKEND_LABEL` at all."""
    made_by = labels_maker(labels)
    if made_by == OLD_MAKER and LABELS_LABEL not in labels:
        return None
    return made_by


def is_alive(state: str | None) -> bool:
    """Usable or on its way (stopped and archived ones are paused, not dead)."""
    return state not in FAILED_STATES | GONE_STATES


def auto_stop_minutes(
    expires_at: str | None, fallback_seconds: float, grace_minutes: float, now: datetime
) -> int:
    """Daytona stops a sandbox after this many idle minutes: our TTL's remaining time plus a
    grace, so the provider never stops one sandboxer still counts as live (any use resets
    its clock) and a leaked one stops soon after the TTL would have ended it."""
    remaining = fallback_seconds
    if expires_at:
        end = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
        if end.tzinfo is None:
            end = end.replace(tzinfo=UTC)
        remaining = (end - now).total_seconds()
    return max(1, math.ceil(max(0.0, remaining) / 60) + math.ceil(grace_minutes))


@dataclass(frozen=True)
class CreatePlan:
    body: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    """What the profile asks that Daytona will not do as asked (for the readiness)."""


def plan_create(
    *,
    sandbox_id: str,
    extension: str,
    profile: Profile,
    project: str | None,
    expires_at: str | None,
    env: Mapping[str, str],
    target: str | None,
    grace_minutes: float,
    now: datetime,
    made_by: MadeBy | None = None,
) -> CreatePlan:
    """The ``CreateSandbox`` body for one of the sandboxes of the declaration ``extension``,
    made by provisioning attempt ``made_by``."""
    image = (profile.image or "").strip()
    if not image:
        raise InvalidInput(
            f"profile {profile.id} names no image: set image to a Daytona snapshot name "
            f"(such as daytonaio/sandbox:0.4.3) or to {IMAGE_PREFIX}<container image>",
            sandbox_id=sandbox_id,
            extension=extension,
        )
    body: dict[str, Any] = {
        "name": provider_name(sandbox_id),
        "labels": our_labels(sandbox_id, project, extension, made_by),
        "env": dict(env),
        "autoStopInterval": auto_stop_minutes(
            expires_at, parse_duration(profile.ttl.default), grace_minutes, now
        ),
        # Counted from the stop: a leaked sandbox is deleted a grace after Daytona stopped it.
        # A pause lifts it while paused (a pause may last as long as the profile allows).
        "autoDeleteInterval": math.ceil(grace_minutes),
    }
    if target:
        body["target"] = target
    policy = profile.network.policy()
    # A declaration without network_ipv6: false or network_max_cidrs routed it here.
    unheld = ipv4_only_unheld("Daytona's networkAllowList", policy) or daytona_blocks_unheld(policy)
    if unheld is not None:
        raise InvalidInput(
            f"profile {profile.id}: {unheld}", sandbox_id=sandbox_id, extension=extension
        )
    body.update(daytona_fields(policy))  # docs/network.md
    warnings = port_warnings("Daytona", policy) + daytona_warnings(policy)
    if profile.setup.instructions:
        warnings.append("setup.instructions are not run by ext.daytona")
    if image.startswith(IMAGE_PREFIX):
        ref = image.removeprefix(IMAGE_PREFIX)
        if not _IMAGE_REF.match(ref):
            raise InvalidInput(
                f"profile {profile.id}: {ref!r} is not a container image reference",
                sandbox_id=sandbox_id,
                extension=extension,
            )
        body["buildInfo"] = {"dockerfileContent": f"FROM {ref}\n"}
        body.update(_resources(profile, sandbox_id, extension))
    else:
        body["snapshot"] = image
        asked = profile.resources
        if any(v is not None for v in (asked.cpu, asked.memory_mb, asked.disk_mb, asked.gpu)):
            warnings.append(
                f"resources: the snapshot {image} fixes cpu, memory, disk and gpu (Daytona "
                f"refuses them with a snapshot); use image: {IMAGE_PREFIX}<image> to size it"
            )
    return CreatePlan(body=body, warnings=warnings)


def _resources(profile: Profile, sandbox_id: str, extension: str) -> dict[str, Any]:
    """cpu (cores), memory and disk (GB) as Daytona's whole units, rounded up; gpu."""
    asked = profile.resources
    out: dict[str, Any] = {}
    if asked.cpu is not None:
        out["cpu"] = math.ceil(asked.cpu)
    if asked.memory_mb is not None:
        out["memory"] = math.ceil(asked.memory_mb / 1024)
    if asked.disk_mb is not None:
        out["disk"] = math.ceil(asked.disk_mb / 1024)
    if asked.gpu:
        if asked.gpu in _GPU_TYPES:
            out["gpu"], out["gpuType"] = 1, [asked.gpu]
        elif asked.gpu.isdigit() and int(asked.gpu) > 0:
            out["gpu"] = int(asked.gpu)
        else:
            raise InvalidInput(
                f"profile {profile.id}: resources.gpu {asked.gpu!r} is not a count or one of "
                f"Daytona's GPU types ({', '.join(_GPU_TYPES)})",
                sandbox_id=sandbox_id,
                extension=extension,
            )
    return out
