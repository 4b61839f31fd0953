"""Secret references (``env:NAME``, ``file:PATH``), resolved only inside a worker.

Values never leave this boundary except into the sandbox; :func:`redact`
scrubs them from any text (an error message, compose output) before that text
is recorded.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from sandboxer.errors import ConfigError

__all__ = ["redact", "resolve_secrets"]

REDACTED = "[redacted]"


def resolve_secrets(refs: Mapping[str, str]) -> dict[str, str]:
    """NAME -> value for every reference; errors name the reference, never a value."""
    values: dict[str, str] = {}
    for name, ref in refs.items():
        scheme, _, target = ref.partition(":")
        if scheme == "env":
            if target not in os.environ:
                raise ConfigError(
                    f"secret {name}: environment variable {target} is not set in the worker"
                )
            values[name] = os.environ[target]
        elif scheme == "file":
            try:
                values[name] = Path(target).expanduser().read_text().rstrip("\n")
            except OSError as exc:
                raise ConfigError(f"secret {name}: cannot read {target}: {exc.strerror}") from None
        else:
            raise ConfigError(f"secret {name}: reference must start with env: or file:")
    return values


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret value replaced by a marker."""
    for value in sorted((v for v in secrets if v), key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text
