"""Pausing a compose sandbox: ``<compose_cmd> -p <project> pause`` (``unpause``) on its host.

The engine freezes every container of the project with the cgroup freezer, as
ext.local does for its processes, and answers once they are paused. The stack
is the one the sandbox's marker records on the host, found again at each
call (a worker keeps nothing between jobs).

Both are idempotent, as a redelivered job needs: the engines refuse to pause
a paused container (or unpause a running one), so a failed command whose
containers all turn out to be in the wanted state already counts as done.

A failure's message gives the exit status but not compose's output: compose
may print the project's environment, which holds the sandbox's secrets, and
the worker does not have their values here to redact them (the teardown is
as careful, for the same reason).
"""

from __future__ import annotations

from sandboxer.errors import RemoteCommandFailed, SandboxNotFound
from sandboxer.extensions.compose_ssh import containers, engine
from sandboxer.extensions.compose_ssh.stack import Stack
from sandboxer.extensions.ssh_targets import SHORT_TIMEOUT, Target
from sandboxer.extensions.ssh_workspace import probe
from sandboxer.ssh import Connection

__all__ = ["set_paused"]

EXTENSION = "ext.compose-ssh"


async def set_paused(conn: Connection, item: Target, sandbox_id: str, *, paused: bool) -> None:
    """Pause (or unpause) the sandbox's compose project on ``item``."""
    stack = Stack.recorded(item, sandbox_id, await probe(conn, item, sandbox_id))
    if stack is None:
        raise SandboxNotFound(
            f"{EXTENSION} sandbox {sandbox_id} has no compose project recorded on host "
            f"{item.name} (its directory or marker is gone); destroy it",
            sandbox_id=sandbox_id,
            extension=EXTENSION,
        )
    verb = "pause" if paused else "unpause"
    result = await stack.run(conn, verb, timeout=SHORT_TIMEOUT, check=False)
    if result.exit_status != 0 and not await _all_in(conn, item, stack, paused=paused):
        raise RemoteCommandFailed(
            f"'{item.config.compose_cmd} {verb}' of project {stack.project} on host "
            f"{item.name} exited {result.exit_status}; run it there by hand to see why "
            "(its output is not shown: it may contain the sandbox's secrets)",
            exit_status=result.exit_status,
            sandbox_id=sandbox_id,
            extension=EXTENSION,
        )


async def _all_in(conn: Connection, item: Target, stack: Stack, *, paused: bool) -> bool:
    """Whether every container of the project is already paused (or running)."""
    label = f"label={containers.PROJECT_LABEL}={stack.project}"
    found = await engine.list_containers(conn, item, label)
    wanted = "paused" if paused else "running"
    return bool(found) and all(container.status == wanted for container in found)
