"""Endpoints and keys of a hosted provider: the declaration's ``settings`` first, then the
environment variables the provider's own SDK reads.

A declaration value is a literal (``api_url: http://127.0.0.1:3000``) or a secret
reference (``api_key: env:TEAM_E2B_KEY``, ``file:/run/keys/e2b``). Errors and
messages name where a value came from (its reference), never the value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sandboxer.errors import ConfigError
from sandboxer.secrets import resolve_secrets

__all__ = ["ProviderValue", "provider_value"]


@dataclass(frozen=True)
class ProviderValue:
    value: str
    source: str
    """Where it came from, for messages: ``env:E2B_API_KEY`` or ``settings.api_key (file:/k)``."""


def provider_value(
    settings: Mapping[str, Any],
    key: str,
    env: Sequence[str] = (),
    *,
    extension: str,
    default: str | None = None,
    required: bool = True,
) -> ProviderValue | None:
    """The value of ``key``: from the declaration's settings, else the first set variable of
    ``env``, else ``default``. ConfigError naming both places when required and missing."""
    given = settings.get(key)
    if given is not None:
        text = str(given)
        if text.startswith(("env:", "file:")):
            return ProviderValue(
                resolve_secrets({f"{extension} settings.{key}": text})[
                    f"{extension} settings.{key}"
                ],
                f"settings.{key} ({text})",
            )
        return ProviderValue(text, f"settings.{key}")
    for name in env:
        if os.environ.get(name):
            return ProviderValue(os.environ[name], f"env:{name}")
    if default is not None:
        return ProviderValue(default, "the default")
    if not required:
        return None
    where = " or ".join(env) if env else "nothing else"
    raise ConfigError(
        f"extension {extension}: no {key}; set {where} in the worker's environment, "
        f"or settings.{key} in its declaration (a value, or env:NAME / file:PATH)",
        extension=extension,
    )
