"""The stub's ``settings:`` section, validated when the worker builds it: a typo or an
out-of-range value stops start-up with a message naming the setting (docs/ext-saas-stub.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sandboxer.errors import ConfigError

__all__ = ["StubSettings", "parse_stub_settings"]


class StubSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_ms: float = Field(default=50, ge=0)
    """How long every call to the stub "provider" takes."""
    failure_rate: float = Field(default=0.0, ge=0, le=1)
    """The share of creates that fail (ProviderUnavailable) after the latency."""
    max_live: int = Field(default=10, ge=0)
    """At most this many live sandboxes (paused ones count); the next create gets ProviderQuota."""
    down_after_create: bool = False
    """An outage that starts once a create is made: readiness and teardown fail with
    ProviderUnavailable (what is made stays), as a provider that went down mid-create."""
    seed: int | None = None
    """Makes the failure draw a function of (seed, sandbox id, attempt): repeatable runs."""
    timeout_margin_s: float = Field(default=60, ge=0)
    """How far past sandboxer's own expiry the stub's provider-side timeout ends a sandbox."""


def parse_stub_settings(raw: Mapping[str, Any], extension: str) -> StubSettings:
    try:
        return StubSettings.model_validate(dict(raw))
    except ValidationError as exc:
        details = "; ".join(
            f"settings.{'.'.join(str(p) for p in err['loc'])}: "
            + ("unknown setting" if err["type"] == "extra_forbidden" else err["msg"])
            for err in exc.errors()
        )
        known = ", ".join(StubSettings.model_fields)
        raise ConfigError(
            f"extension {extension}: {details} (its settings are {known}; see "
            "docs/ext-saas-stub.md)",
            extension=extension,
        ) from None
