"""Secret references (``env:NAME``, ``file:PATH``), resolved only inside a worker.

Values never leave this boundary except into the sandbox; :func:`redact`
scrubs them from any text (an error message, compose output) before that text
is recorded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from sandboxer.errors import ConfigError

__all__ = ["redact", "resolve_secrets"]

REDACTED = "[redacted]"
MIN_LINE_CHARS = 8
"""A line of a multi-line secret this long is redacted on its own (shorter ones, such as
``}`` or a short base64 end, would hide ordinary output too)."""


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
    r"""``text`` with every secret value replaced by a marker.

    Give it the whole text that was kept and cut that to a tail only after: a
    tail that begins inside a secret no longer holds the whole value. Line
    endings are compared normalised (``\r\n`` and ``\r`` read as ``\n``, in the
    text and in the values): output that went through a terminal or
    ``splitlines()`` has lost a CRLF secret's ``\r``. Besides each whole value
    (of any length), each line of at least :data:`MIN_LINE_CHARS` characters of
    a multi-line value is replaced on its own, so what is left of a secret whose
    start is missing (older output dropped, a partly printed key) is still
    hidden; and so are the JSON-escaped and ``repr`` forms of each value, a
    serialised copy in which a newline is written ``\n``.
    """
    text = _normalised(text)
    # The needles are built once per call; each costs one scan of the text, and a
    # secret brings a handful plus one per line (a private key: about thirty).
    needles: set[str] = set()
    for value in (v for v in secrets if v):
        plain = _normalised(value)
        needles.update((plain, plain.strip("\n")))  # strip: a value read with its newline
        for form in (value, plain):  # escaped copies keep a CRLF secret's \r as "\\r"
            needles.add(json.dumps(form)[1:-1])
            needles.add(json.dumps(form, ensure_ascii=False)[1:-1])
            needles.add(repr(form)[1:-1])
        lines = (line.strip() for line in plain.split("\n"))
        needles.update(line for line in lines if len(line) >= MIN_LINE_CHARS)
    needles.discard("")
    # Longest first: a whole value becomes one marker before its lines are looked for.
    for needle in sorted(needles, key=lambda needle: (-len(needle), needle)):
        text = text.replace(needle, REDACTED)
    return text


def _normalised(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")
