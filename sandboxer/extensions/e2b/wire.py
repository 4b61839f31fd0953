"""Pure translation between our requests and E2B's bodies (``../shared/specs/e2b-openapi.json``).

Nothing here does I/O or reads the clock: the time comes in as a value, so the
timeout arithmetic is tested on its own. A reader given what is not the spec's
raises ValueError, which :mod:`.api` turns into a ProviderError naming the request. What E2B answers is read field by
field into small values that never hold ``envdAccessToken`` or
``trafficAccessToken``: the per-sandbox tokens are read apart, by
:func:`read_tokens`, only to go straight into the token store, so no value
that is logged or recorded can carry them by accident.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sandboxer.config.profile import Profile
from sandboxer.domain.timestamps import seconds_between
from sandboxer.durations import parse_duration
from sandboxer.errors import ExtensionError, InvalidInput
from sandboxer.extensions.base import ProvisionRequest
from sandboxer.extensions.e2b.config import E2bSettings
from sandboxer.extensions.network_fields import e2b_fields, ipv4_only_unheld, port_warnings
from sandboxer.hosted.labels import labels_for, maker, our_sandbox_id

__all__ = [
    "Created",
    "Listed",
    "Timeout",
    "create_body",
    "descriptor",
    "read_created",
    "read_listed",
    "read_tokens",
    "resource_warnings",
    "template_of",
    "timeout_for",
    "ttl_seconds",
]


@dataclass(frozen=True)
class Timeout:
    """Seconds for E2B's ``timeout``, and a warning when the plan's limit cut it short."""

    seconds: int
    warning: str | None = None


def timeout_for(
    expires_at: str | None, now: str, settings: E2bSettings, *, ttl_fallback: float
) -> Timeout:
    """E2B's timeout (seconds from now) for a sandbox we expire at ``expires_at``.

    Our TTL ends the sandbox; E2B's timeout is a backstop ``timeout_margin`` later,
    so a leak is ended by E2B and the sandbox is never ended early. Without an
    expiry (a caller that did not say), the profile's default TTL stands in.
    """
    remaining = seconds_between(now, expires_at) if expires_at else ttl_fallback
    wanted = max(settings.min_timeout, math.ceil(remaining) + settings.timeout_margin)
    if wanted <= settings.max_timeout:
        return Timeout(wanted)
    return Timeout(
        settings.max_timeout,
        f"E2B ends this sandbox after {settings.max_timeout} s (settings.max_timeout, the "
        f"plan's limit), {wanted - settings.max_timeout} s before its TTL plus margin; "
        "extend it with `sandboxer extend-ttl` to move E2B's timeout too",
    )


def template_of(profile: Profile) -> str:
    """The E2B template (alias or id) the profile starts from: its ``image``."""
    if not profile.image:
        raise ExtensionError(
            f"profile {profile.id} names no E2B template: set `image:` in the profile to a "
            "template alias or id (e.g. image: base)",
            extension="ext.e2b",
        )
    return profile.image


def create_body(
    request: ProvisionRequest, template: str, timeout: int, extension: str
) -> tuple[dict[str, Any], list[str]]:
    """The ``NewSandbox`` body (labelled as ``extension``'s), and what of the profile E2B's
    create cannot carry."""
    profile = request.profile
    body: dict[str, Any] = {
        "templateID": template,
        "timeout": timeout,
        "metadata": labels_for(request.sandbox_id, request.project, extension, request.made_by),
    }
    warnings: list[str] = []
    if request.secrets:
        body["envVars"] = dict(request.secrets)  # delivered into the sandbox as variables
    policy = profile.network.policy()
    unheld = ipv4_only_unheld("E2B's network.allowOut", policy)
    if unheld is not None:  # a declaration without network_ipv6: false routed it here
        raise InvalidInput(
            f"profile {profile.id}: {unheld}", sandbox_id=request.sandbox_id, extension=extension
        )
    body.update(e2b_fields(policy))  # docs/network.md
    warnings.extend(port_warnings("E2B", policy))
    if profile.resources.pids is not None:
        warnings.append("E2B has no process limit: resources.pids is not enforced")
    return body, warnings


def resource_warnings(profile: Profile, sandbox: Listed) -> list[str]:
    """Where the sandbox E2B made differs from the profile's resources.

    E2B sizes a sandbox by its template, not per create, so a profile's
    ``cpu``/``memory_mb``/``disk_mb`` can only be checked against what came up.
    """
    asked = profile.resources
    pairs = [
        ("cpu", asked.cpu, sandbox.cpu_count),
        ("memory_mb", asked.memory_mb, sandbox.memory_mb),
        ("disk_mb", asked.disk_mb, sandbox.disk_mb),
    ]
    return [
        f"resources.{name}: the profile asks {want:g}, E2B's template gave {got}; E2B sizes "
        f"a sandbox by its template (build one with the size you need)"
        for name, want, got in pairs
        if want is not None and got is not None and float(want) != float(got)
    ]


@dataclass(frozen=True)
class Created:
    """What a create (or a resume) answered, without the tokens."""

    provider_id: str
    template: str
    alias: str | None = None
    domain: str | None = None
    envd_version: str | None = None


def read_created(body: Any) -> Created:
    """ValueError when ``body`` is not a ``Sandbox`` (the caller says which answer it was)."""
    if not isinstance(body, Mapping) or not isinstance(body.get("sandboxID"), str):
        raise ValueError("not a Sandbox: no sandboxID")
    return Created(
        provider_id=body["sandboxID"],
        template=str(body.get("templateID", "")),
        alias=_text(body.get("alias")),
        domain=_text(body.get("domain")),
        envd_version=_text(body.get("envdVersion")),
    )


TOKEN_FIELDS = {
    "envdAccessToken": "envd_access_token",
    "trafficAccessToken": "traffic_access_token",
}
"""E2B's per-sandbox tokens, and the names the token service hands them out under."""


def read_tokens(body: Any) -> dict[str, str]:
    """Only the tokens of an answer, for the token store (never for an event or a log)."""
    if not isinstance(body, Mapping):
        return {}
    return {
        ours: body[theirs]
        for theirs, ours in TOKEN_FIELDS.items()
        if isinstance(body.get(theirs), str) and body[theirs]
    }


@dataclass(frozen=True)
class Listed:
    """One sandbox as E2B lists or describes it, without the tokens."""

    provider_id: str
    state: str
    template: str
    metadata: dict[str, str] = field(default_factory=dict)
    alias: str | None = None
    started_at: str | None = None
    end_at: str | None = None
    cpu_count: int | None = None
    memory_mb: int | None = None
    disk_mb: int | None = None
    domain: str | None = None

    @property
    def ours(self) -> str | None:
        """Our sandbox id when it carries our label."""
        return our_sandbox_id(self.metadata)

    @property
    def maker(self) -> str | None:
        """The backend declaration that made it; None when made before the label."""
        return maker(self.metadata)

    def as_created(self) -> Created:
        return Created(self.provider_id, self.template, self.alias, self.domain)


def read_listed(body: Any) -> Listed:
    """A ``ListedSandbox`` or ``SandboxDetail``; ValueError when ``body`` is neither."""
    if not isinstance(body, Mapping) or not isinstance(body.get("sandboxID"), str):
        raise ValueError("not a ListedSandbox: no sandboxID")
    metadata = body.get("metadata") or {}
    return Listed(
        provider_id=body["sandboxID"],
        state=str(body.get("state", "")),
        template=str(body.get("templateID", "")),
        metadata={str(k): str(v) for k, v in metadata.items()}
        if isinstance(metadata, Mapping)
        else {},
        alias=_text(body.get("alias")),
        started_at=_text(body.get("startedAt")),
        end_at=_text(body.get("endAt")),
        cpu_count=_int(body.get("cpuCount")),
        memory_mb=_int(body.get("memoryMB")),
        disk_mb=_int(body.get("diskSizeMB")),
        domain=_text(body.get("domain")),
    )


def descriptor(sandbox: Listed, domain: str) -> dict[str, Any]:
    """How to reach a ready sandbox (recorded in the ``ready`` event: no token in it).

    E2B serves a sandbox's port P at ``https://P-<sandboxID>.<domain>``; the E2B SDK
    connects to it by ``sandbox_id`` (``Sandbox.connect``) with the team's key.
    """
    at = sandbox.domain or domain
    found: dict[str, Any] = {
        "kind": "e2b",
        "sandbox_id": sandbox.provider_id,
        "template": sandbox.alias or sandbox.template,
        "template_id": sandbox.template,
        "domain": at,
        "port_url": f"https://{{port}}-{sandbox.provider_id}.{at}",
        "state": sandbox.state,
    }
    if sandbox.end_at:
        found["provider_end_at"] = sandbox.end_at
    if sandbox.cpu_count is not None:
        found["cpu_count"] = sandbox.cpu_count
    if sandbox.memory_mb is not None:
        found["memory_mb"] = sandbox.memory_mb
    return found


def ttl_seconds(profile: Profile) -> float:
    """The profile's default TTL, for a request that carries no expiry."""
    return parse_duration(profile.ttl.default)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
