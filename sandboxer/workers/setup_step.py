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

from sandboxer.errors import SetupFailed
from sandboxer.events.types import SetupRecord
from sandboxer.extensions.base import Extension
from sandboxer.extensions.output_capture import (
    KEPT_BYTES,
    TAIL_CHARS,
    TAIL_LINES,
    OutputCapture,
    output_tail,
)
from sandboxer.secrets import redact

__all__ = [
    "KEPT_BYTES",
    "TAIL_CHARS",
    "TAIL_LINES",
    "output_tail",
    "run_setup_commands",
    "workspace_access_warning",
]


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
        capture = OutputCapture()
        argv = ["/bin/sh", "-c", command]
        code: int | None = None
        try:
            async with asyncio.timeout(timeout):
                code = await backend.exec(sandbox_id, argv, capture.keep, host=host)
        except TimeoutError:
            code = None
        tail = capture.tail(secrets)
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
