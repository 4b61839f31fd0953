"""The end of a command's output, kept while it runs and recorded redacted.

A profile's setup steps (``setup.commands`` through any backend's exec, and
``setup.instructions`` inside ext.local and ext.vm-packer) keep only the newest
output of each command, and a failure's reason or a ``ready`` event carries
its last lines with every resolved secret replaced by ``[redacted]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

from sandboxer.secrets import redact

__all__ = [
    "KEPT_BYTES",
    "TAIL_CHARS",
    "TAIL_LINES",
    "OutputCapture",
    "output_tail",
    "redacted_tail",
]

KEPT_BYTES = 64 * 1024
"""The most output kept of one command while it runs (the rest, older, is dropped)."""
TAIL_LINES = 20
TAIL_CHARS = 2000
"""A recorded tail is at most this many lines and characters: events stay small."""


class OutputCapture:
    """The newest :data:`KEPT_BYTES` of a command's output (stdout and stderr interleaved);
    ``keep`` is the command's output sink."""

    def __init__(self) -> None:
        self.kept = bytearray()
        self.dropped = False

    async def keep(self, _stream: Literal["stdout", "stderr"], data: bytes) -> None:
        self.kept.extend(data)
        excess = len(self.kept) - KEPT_BYTES
        if excess > 0:
            del self.kept[:excess]
            self.dropped = True

    def tail(self, secrets: Mapping[str, str]) -> str:
        """What is kept, as :func:`output_tail` records it."""
        return output_tail(bytes(self.kept), secrets, cut=self.dropped)


def output_tail(captured: bytes, secrets: Mapping[str, str], *, cut: bool) -> str:
    """The last lines of ``captured``, redacted. ``cut``: older output was dropped, so the
    first kept line may be the end of a longer one, perhaps the end of a secret that
    redaction cannot recognise any more; that line is left out."""
    return redacted_tail(captured.decode(errors="replace"), secrets.values(), cut=cut)


def redacted_tail(
    text: str,
    secrets: Iterable[str],
    *,
    lines: int = TAIL_LINES,
    chars: int | None = TAIL_CHARS,
    cut: bool = False,
) -> str:
    """The last ``lines`` lines of ``text`` (and at most ``chars`` characters), every secret
    value redacted; ``cut``: the first line is left out (see :func:`output_tail`).

    All of ``text`` is redacted before anything is cut: a secret printed over more lines
    than are kept (a private key) would otherwise be only partly in the tail, where its
    whole value no longer matches, and a tail trimmed to size could begin mid-secret.
    """
    kept = redact(text, secrets).splitlines()
    if cut and kept:
        kept = kept[1:]
    tail = "\n".join(kept[-lines:])
    return tail if chars is None else tail[-chars:]
