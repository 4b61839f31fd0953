"""Waiting until a compose project's containers all run, and explaining why they do not.

"Ready" means every container of the project is ``running``, seen twice
:data:`STABLE_AFTER` seconds apart without a restart: a container that
crashes right after starting must not pass. The first two sightings are one
remote command (the host sleeps between them), taken right after compose's
``up -d`` in the same command when the create allows (:func:`up_and_look`),
so a stack that comes up needs no round trip of its own to be confirmed.
A container that stopped fails the wait at once, with its last log lines;
no health checks are run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from sandboxer.errors import ExtensionError
from sandboxer.extensions.compose_ssh import containers, engine
from sandboxer.extensions.compose_ssh.stack import Stack
from sandboxer.extensions.ssh_targets import SHORT_TIMEOUT
from sandboxer.ssh import Connection, remote

__all__ = [
    "LOG_LINES",
    "READY_POLL",
    "STABLE_AFTER",
    "await_running",
    "project_label",
    "settled",
    "up_and_look",
]

EXTENSION = "ext.compose-ssh"
READY_POLL = 0.25
STABLE_AFTER = 0.3
"""A stack counts as ready when it is all running twice, this many seconds apart, unrestarted."""
LOG_LINES = 20


def project_label(stack: Stack) -> str:
    return f"label={containers.PROJECT_LABEL}={stack.project}"


def settled(sightings: engine.Sightings) -> list[containers.Container] | None:
    """The containers, if both sightings (taken at least STABLE_AFTER apart) show every one
    running and none restarted in between; else None."""
    first, second = sightings
    if not (containers.assess(first, []).ready and containers.assess(second, []).ready):
        return None
    return second if containers.fingerprint(first) == containers.fingerprint(second) else None


async def up_and_look(
    conn: Connection, stack: Stack, up_argv: Sequence[str], timeout: float
) -> engine.Sightings:
    """Run compose's ``up -d`` (``up_argv``), then take readiness's two sightings, in one
    remote command: a stack that comes up needs no further round trip to be confirmed."""
    return await engine.list_containers_twice(
        conn,
        stack.target,
        STABLE_AFTER,
        project_label(stack),
        first=up_argv,
        cwd=stack.directory,
        timeout=timeout,
    )


async def await_running(
    conn: Connection,
    stack: Stack,
    ready_timeout: float,
    sightings: engine.Sightings | None = None,
) -> list[containers.Container]:
    """The project's containers once all run, seen twice unchanged; fails fast on one
    that stopped, and after ``ready_timeout`` seconds on one still starting."""
    deadline = time.monotonic() + ready_timeout
    label = project_label(stack)
    # The usual case in one remote command: both sightings, STABLE_AFTER apart on the host
    # (or none at all: provision's `up -d` took them, see up_and_look).
    if sightings is None:
        sightings = await engine.list_containers_twice(conn, stack.target, STABLE_AFTER, label)
    first, second = sightings
    for found in (first, second):
        state = containers.assess(found, [])
        if state.failed:
            raise await _stopped(conn, stack, state.failed)
    running = settled(sightings)
    if running is not None:
        return running
    confirmed: list[tuple[str, str, int]] | None = None
    if containers.assess(second, []).ready:
        confirmed = containers.fingerprint(second)
    # Still starting, or changed between the sightings: poll as before.
    await asyncio.sleep(STABLE_AFTER if confirmed is not None else READY_POLL)
    while True:
        found = await engine.list_containers(conn, stack.target, label)
        state = containers.assess(found, [])
        if state.failed:
            raise await _stopped(conn, stack, state.failed)
        if state.ready:
            if confirmed == containers.fingerprint(found):
                return found
            confirmed = containers.fingerprint(found)
            await asyncio.sleep(STABLE_AFTER)
            continue
        confirmed = None
        if time.monotonic() > deadline:
            waiting = ", ".join(f"{c.service or c.name} ({c.status})" for c in state.waiting)
            raise ExtensionError(
                f"compose project {stack.project} on host {stack.target.name} is not running "
                f"after {ready_timeout:g}s: "
                + (f"waiting for {waiting}" if waiting else "it has no containers")
                + f"; check '{containers.engine(stack.target.config)} ps -a' and the "
                "containers' logs on the host",
                sandbox_id=stack.sandbox_id,
                extension=EXTENSION,
            )
        await asyncio.sleep(READY_POLL)


async def _stopped(
    conn: Connection, stack: Stack, failed: list[containers.Container]
) -> ExtensionError:
    first = failed[0]
    logs = await remote.run(
        conn,
        [containers.engine(stack.target.config), "logs", "--tail", str(LOG_LINES), first.id],
        env=stack.target.config.env,
        timeout=SHORT_TIMEOUT,
        check=False,
    )
    tail = "\n".join((logs.stdout + logs.stderr).strip().splitlines()[-LOG_LINES:])
    names = ", ".join(
        f"{c.service or c.name} ({c.status}, exit code {c.exit_code})" for c in failed
    )
    return ExtensionError(
        f"compose project {stack.project} on host {stack.target.name}: {names} stopped "
        f"instead of running; fix the service's command or image. Last log lines of "
        f"{first.service or first.name}:\n{tail or '(no output)'}",
        sandbox_id=stack.sandbox_id,
        extension=EXTENSION,
    )
