"""ext.modal's declaration settings (endpoint and token references stay unresolved here)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sandboxer.errors import ConfigError
from sandboxer.extensions.modal.boundary import RetryPolicy
from sandboxer.hosted.create_once import DEFAULT_SETTLE

__all__ = ["DEFAULT_SERVER_URL", "EXTENSION_ID", "ModalConfig"]

EXTENSION_ID = "ext.modal"
DEFAULT_SERVER_URL = "https://api.modal.com"

_KNOWN_SETTINGS = frozenset(
    {
        "server_url",
        "token_id",
        "token_secret",
        "app_name",
        "environment",
        "timeout_margin",
        "call_timeout",
        "retry_attempts",
        "retry_budget",
        "retry_wait",
        "region",
        "workdir",
        "create_settle",
    }
)


def _number(settings: Mapping[str, Any], key: str, default: float) -> float:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(
            f"extension {EXTENSION_ID}: settings.{key} must be a positive number, not {value!r}",
            extension=EXTENSION_ID,
        )
    return float(value)


@dataclass(frozen=True)
class ModalConfig:
    """The declaration's ``settings`` (endpoint and token references stay unresolved here)."""

    settings: Mapping[str, Any] = field(default_factory=dict)
    app_name: str = "sandboxer"
    environment: str | None = None
    timeout_margin: float = 600.0
    """Seconds past our expiry at which Modal's own timeout ends the sandbox (a backstop)."""
    region: str | None = None
    workdir: str = "/workspace"
    """The sandbox's working directory: where exec starts, and what a snapshot copies."""
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    create_settle: float = DEFAULT_SETTLE
    """Seconds after a create we gave up on during which Modal may still carry it out: a
    teardown in that window keeps looking for it."""

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> ModalConfig:
        unknown = sorted(set(settings) - _KNOWN_SETTINGS)
        if unknown:
            raise ConfigError(
                f"extension {EXTENSION_ID}: unknown settings {', '.join(unknown)}; known: "
                f"{', '.join(sorted(_KNOWN_SETTINGS))}",
                extension=EXTENSION_ID,
            )
        policy = RetryPolicy(
            call_timeout=_number(settings, "call_timeout", 60.0),
            attempts=int(_number(settings, "retry_attempts", 4)),
            budget=_number(settings, "retry_budget", 60.0),
            wait_initial=_number(settings, "retry_wait", 0.2),
        )
        region = settings.get("region")
        environment = settings.get("environment")
        workdir = str(settings.get("workdir", "/workspace"))
        if not workdir.startswith("/") or "\0" in workdir:
            raise ConfigError(
                f"extension {EXTENSION_ID}: settings.workdir must be an absolute path, "
                f"not {workdir!r}",
                extension=EXTENSION_ID,
            )
        return cls(
            settings=dict(settings),
            app_name=str(settings.get("app_name", "sandboxer")),
            environment=str(environment) if environment else None,
            timeout_margin=_number(settings, "timeout_margin", 600.0),
            region=str(region) if region else None,
            workdir=workdir,
            policy=policy,
            create_settle=_number(settings, "create_settle", DEFAULT_SETTLE),
        )
