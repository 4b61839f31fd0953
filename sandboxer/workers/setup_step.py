"""A profile's ``setup.commands``, run inside a sandbox before it is announced ``ready``.

The extension worker runs each command through the backend's own exec (so
every backend with an exec runs them the same way), in order, as
``/bin/sh -c COMMAND`` in the workspace. What is recorded of each is its exit
code and the tail of its output, with every resolved secret value replaced by
``[redacted]``: the tail goes into the ``ready`` event, or into the reason of
the ``failed`` event when a command exits non-zero. The output is never
logged. docs/profiles.md#setup-commands.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Literal

from sandboxer.errors import SetupFailed
from sandboxer.events.types import SetupRecord
from sandboxer.extensions.base import Extension
from sandboxer.secrets import redact

__all__ = [
    "KEPT_BYTES",
    "TAIL_CHARS",
    "TAIL_LINES",
    "output_tail",
    "run_setup_commands",
    "workspace_access_warning",
]

KEPT_BYTES = 64 * 1024
"""The most output kept of one command while it runs (the rest, older, is dropped)."""
TAIL_LINES = 20
TAIL_CHARS = 2000
"""A recorded tail is at most this many lines and characters: events stay small."""


def output_tail(captured: bytes, secrets: Mapping[str, str], *, cut: bool) -> str:
    """The last lines of ``captured``, redacted. ``cut``: older output was dropped, so the
    first kept line may be the end of a longer one, perhaps the end of a secret that
    redaction cannot recognise any more; that line is left out."""
    text = captured.decode(errors="replace")
    lines = text.splitlines()
    if cut and lines:
        lines = lines[1:]
    # Redacted before trimming to size, so a secret is never cut in half by the trimming.
    tail = redact("\n".join(lines[-TAIL_LINES:]), secrets.values())
    return tail[-TAIL_CHARS:]


class _Capture:
    """The newest :data:`KEPT_BYTES` of a command's output (stdout and stderr interleaved)."""

    def __init__(self) -> None:
        self.kept = bytearray()
        self.dropped = False

    async def keep(self, _stream: Literal["stdout", "stderr"], data: bytes) -> None:
        self.kept.extend(data)
        excess = len(self.kept) - KEPT_BYTES
        if excess > 0:
            del self.kept[:excess]
            self.dropped = True


async def run_setup_commands(
    backend: Extension,
    sandbox_id: str,
    commands: Sequence[str],
    secrets: Mapping[str, str],
    *,
    host: str | None,
    timeout: float = 600.0,
) -> list[SetupRecord]:
    """Run ``commands`` in order, each for at most ``timeout`` seconds (the backend stops a
    command whose exec is cancelled); SetupFailed (redacted tail in its message) on the first
    that exits non-zero or runs too long."""
    records: list[SetupRecord] = []
    for index, command in enumerate(commands):
        capture = _Capture()
        argv = ["/bin/sh", "-c", command]
        code: int | None = None
        try:
            async with asyncio.timeout(timeout):
                code = await backend.exec(sandbox_id, argv, capture.keep, host=host)
        except TimeoutError:
            code = None
        tail = output_tail(bytes(capture.kept), secrets, cut=capture.dropped)
        if code != 0:
            ended = f"ran past {timeout:g}s" if code is None else f"exited with code {code}"
            raise SetupFailed(
                f"setup.commands[{index}] ({redact(command, secrets.values())[:200]!r}) {ended}; "
                f"last output:\n{tail or '(no output)'}",
                sandbox_id=sandbox_id,
                extension=backend.id,
            )
        records.append(SetupRecord(index=index, exit_code=code, output_tail=tail))
    return records


def workspace_access_warning(backend: Extension, access: str) -> str | None:
    """What ``ready`` says when the profile asks for a workspace access the backend does not
    enforce (only backends marked ``enforces_workspace_access`` do, ext.local)."""
    if access == "rw" or getattr(backend, "enforces_workspace_access", False):
        return None
    return (
        f"workspace.access {access} is not enforced by {backend.id}: the sandbox can "
        "write its workspace; use ext.local where the access must hold"
    )
