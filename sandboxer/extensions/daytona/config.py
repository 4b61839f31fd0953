"""ext.daytona's settings: the declaration's ``settings:`` section, checked when the class is
built; the endpoint and key are resolved later, on first use (:meth:`DaytonaConfig.endpoint`),
so a worker starts without a key and the first create says what is missing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sandboxer.errors import ConfigError
from sandboxer.hosted.create_once import DEFAULT_SETTLE
from sandboxer.hosted.provider_settings import ProviderValue, provider_value

__all__ = ["DEFAULT_API_URL", "EXTENSION_ID", "DaytonaConfig", "Endpoint"]

EXTENSION_ID = "ext.daytona"
DEFAULT_API_URL = "https://app.daytona.io/api"

_NUMBERS: dict[str, float] = {
    "request_timeout": 30.0,
    "poll_interval": 1.0,
    "ready_timeout": 600.0,
    "exec_timeout": 3600.0,
    "leak_grace_minutes": 15.0,
    "create_settle": DEFAULT_SETTLE,
}
"""Numeric settings and their defaults (seconds, except the grace, in minutes)."""
_TEXTS = ("api_url", "api_key", "target", "workdir")


@dataclass(frozen=True)
class Endpoint:
    """Where the API is and the key it takes; ``key.source`` names the key in messages."""

    api_url: ProviderValue
    key: ProviderValue
    target: ProviderValue | None


@dataclass(frozen=True)
class DaytonaConfig:
    settings: Mapping[str, Any]
    request_timeout: float = _NUMBERS["request_timeout"]
    """Seconds one API request may take (a create whose answer is slower is looked for)."""
    poll_interval: float = _NUMBERS["poll_interval"]
    ready_timeout: float = _NUMBERS["ready_timeout"]
    """Seconds a sandbox may take from create (or start, stop, delete) to its next state."""
    exec_timeout: float = _NUMBERS["exec_timeout"]
    """Seconds a command run through the toolbox may take (the toolbox's own default is 10)."""
    leak_grace_minutes: float = _NUMBERS["leak_grace_minutes"]
    """Minutes past our TTL after which Daytona stops an idle sandbox, and then deletes it."""
    create_settle: float = _NUMBERS["create_settle"]
    """Seconds after a create we gave up on during which Daytona may still carry it out: a
    teardown in that window keeps looking for it."""
    workdir: str | None = None
    """The directory commands run in and snapshots copy; default: the sandbox user's home."""
    extension: str = EXTENSION_ID
    """The declaration's id (``ext.daytona-eu``), for messages."""

    @classmethod
    def from_settings(
        cls, settings: Mapping[str, Any], extension: str = EXTENSION_ID
    ) -> DaytonaConfig:
        unknown = sorted(set(settings) - set(_NUMBERS) - set(_TEXTS))
        if unknown:
            raise ConfigError(
                f"extension {extension}: unknown settings {', '.join(unknown)}; it takes "
                f"{', '.join(sorted((*_NUMBERS, *_TEXTS)))} (docs/ext-daytona.md)",
                extension=extension,
            )
        numbers = {
            key: _positive(settings, key, default, extension) for key, default in _NUMBERS.items()
        }
        workdir = settings.get("workdir")
        if workdir is not None and not str(workdir).startswith("/"):
            raise ConfigError(
                f"extension {extension}: settings.workdir must be an absolute path in the "
                f"sandbox, not {workdir!r}",
                extension=extension,
            )
        return cls(
            settings=dict(settings),
            workdir=None if workdir is None else str(workdir),
            extension=extension,
            **numbers,
        )

    def endpoint(self, key: ProviderValue | None = None) -> Endpoint:
        """The API URL, key and target, from the settings or Daytona's SDK variables; a given
        ``key`` (a project's own, BYOK) replaces the declaration's, which is then not needed."""
        api_url = provider_value(
            self.settings,
            "api_url",
            ("DAYTONA_API_URL",),
            extension=self.extension,
            default=DEFAULT_API_URL,
        )
        if key is None:
            key = provider_value(
                self.settings, "api_key", ("DAYTONA_API_KEY",), extension=self.extension
            )
        target = provider_value(
            self.settings, "target", ("DAYTONA_TARGET",), extension=self.extension, required=False
        )
        assert api_url is not None  # required values raise instead
        assert key is not None
        return Endpoint(api_url=api_url, key=key, target=target)


def _positive(settings: Mapping[str, Any], key: str, default: float, extension: str) -> float:
    value = settings.get(key, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if number <= 0 or isinstance(value, bool):
        raise ConfigError(
            f"extension {extension}: settings.{key} must be a positive number, not {value!r}",
            extension=extension,
        )
    return number
