"""ext.e2b's settings: the declaration's ``settings`` section, then E2B's SDK variables.

The numbers are checked when the backend is built, so a typo stops the worker
at start with the field named. The endpoint and the key are resolved on first
use, not at start: ``sandboxer up`` still starts without ``E2B_API_KEY``, and
the first create fails with a ConfigError that says where to set it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sandboxer.errors import ConfigError
from sandboxer.hosted.create_once import DEFAULT_SETTLE
from sandboxer.hosted.provider_settings import ProviderValue, provider_value

__all__ = ["DEFAULT_DOMAIN", "E2bEndpoint", "E2bSettings", "parse_settings", "resolve_endpoint"]

DEFAULT_DOMAIN = "e2b.app"
INT32_MAX = 2**31 - 1


class E2bSettings(BaseModel):
    """What a declaration may set under ``settings:`` (docs/ext-e2b.md has the table)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_url: str | None = None
    """The API's base URL (a value or env:/file: reference); else E2B_API_URL, else from domain."""
    domain: str | None = None
    """E2B's domain (``e2b.app``); the API is ``https://api.<domain>``. Else E2B_DOMAIN."""
    api_key: str | None = None
    """A reference such as ``env:TEAM_E2B_KEY`` or ``file:/run/keys/e2b``; else E2B_API_KEY."""
    request_timeout: float = Field(default=30.0, gt=0)
    """Seconds to wait for one answer of the API."""
    retry_budget: float = Field(default=30.0, gt=0)
    """Seconds in which a failing safe request (not a create) is retried with backoff."""
    timeout_margin: int = Field(default=120, ge=0)
    """Seconds past our TTL that E2B's own timeout ends the sandbox (a backstop: we expire
    it ourselves first)."""
    min_timeout: int = Field(default=60, ge=1)
    """The shortest timeout we ever send, so a sandbox due now is not killed mid-request."""
    max_timeout: int = Field(default=86_400, ge=1, le=INT32_MAX)
    """The longest timeout the team's plan allows (24 h on Pro, 1 h on Hobby)."""
    resume_timeout: int = Field(default=3_600, ge=1, le=INT32_MAX)
    """The timeout a resume asks for; the worker then moves it to the new TTL at once."""
    create_settle: float = Field(default=DEFAULT_SETTLE, ge=0)
    """Seconds after a create we gave up on during which E2B may still carry it out: a
    teardown in that window keeps looking for it (:class:`~sandboxer.hosted.create_once.LateCreates`)."""


def parse_settings(settings: Mapping[str, Any], extension: str) -> E2bSettings:
    """The declaration's settings, or a ConfigError naming the field and what it accepts."""
    try:
        return E2bSettings.model_validate(dict(settings))
    except ValidationError as exc:
        problems = "; ".join(
            f"settings.{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise ConfigError(
            f"extension {extension}: {problems}. See docs/ext-e2b.md for the settings it takes.",
            extension=extension,
        ) from None


@dataclass(frozen=True)
class E2bEndpoint:
    """Where the API is and the key to use (resolved; ``key.value`` is a secret)."""

    base_url: str
    base_url_source: str
    domain: str
    key: ProviderValue


def resolve_endpoint(
    settings: E2bSettings, extension: str, key: ProviderValue | None = None
) -> E2bEndpoint:
    """The declaration's values first, then the variables E2B's SDK reads, then its default.

    Order for the URL: ``settings.api_url``, ``settings.domain`` (as ``https://api.<domain>``),
    ``E2B_API_URL``, ``E2B_DOMAIN``, ``https://api.e2b.app``. A given ``key`` (a project's
    own, BYOK) replaces the declaration's, which is then not needed.
    """
    raw = settings.model_dump(exclude_none=True)
    declared: dict[str, Any] = {k: raw[k] for k in ("api_url", "domain", "api_key") if k in raw}
    domain = provider_value(
        declared, "domain", ("E2B_DOMAIN",), extension=extension, default=DEFAULT_DOMAIN
    )
    assert domain is not None
    url = provider_value(declared, "api_url", (), extension=extension, required=False)
    if url is None and "domain" not in declared:
        url = provider_value({}, "api_url", ("E2B_API_URL",), extension=extension, required=False)
    if url is None:
        url = ProviderValue(
            f"https://api.{domain.value}", f"https://api.<domain from {domain.source}>"
        )
    if key is None:
        key = provider_value(declared, "api_key", ("E2B_API_KEY",), extension=extension)
    assert key is not None
    return E2bEndpoint(
        base_url=url.value.rstrip("/"), base_url_source=url.source, domain=domain.value, key=key
    )
