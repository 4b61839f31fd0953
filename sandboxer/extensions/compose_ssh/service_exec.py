"""``sandboxer exec`` on a compose sandbox: the command runs inside one service's container.

A compose sandbox's work happens in its containers, not on the host, so
exec goes through ``COMPOSE -p PROJECT -f FILE exec -T SERVICE ARGV...``
(``-T``: no terminal, so output streams back as plain bytes; docker-compose
1.29, ``docker compose`` and podman-compose all take it). Without a service
the first one compose lists for the file is used.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, Sequence

from sandboxer.errors import InvalidInput, SandboxNotFound
from sandboxer.extensions.compose_ssh.stack import Stack
from sandboxer.extensions.ssh_exec_stop import STOP_TIMEOUT, kill_argv, on_close_line, stoppable
from sandboxer.extensions.ssh_targets import Target
from sandboxer.extensions.ssh_workspace import probe
from sandboxer.ssh import ChunkSink, Connection, command_line, remote, stream

__all__ = ["check_service", "exec_in_service"]

EXTENSION = "ext.compose-ssh"
_SERVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_service(service: str | None, sandbox_id: str) -> None:
    """A service name is a word of compose's alphabet: refused before any connection."""
    if service is not None and not _SERVICE_NAME.fullmatch(service):
        raise InvalidInput(
            f"service {service!r} is not a compose service name (letters, digits, '.', '_', '-')",
            sandbox_id=sandbox_id,
            extension=EXTENSION,
        )


async def exec_in_service(
    conn: Connection,
    item: Target,
    sandbox_id: str,
    argv: Sequence[str],
    output: ChunkSink,
    service: str | None,
    *,
    stdin: AsyncIterable[bytes] | None = None,
) -> int:
    """Run ``argv`` in ``service``'s container (the first service when ``None``); ``stdin``
    reaches the command through ``exec -T``, which keeps the container's input open.
    Cancelled, it kills what the command started in the container
    (:mod:`~sandboxer.extensions.ssh_exec_stop`)."""
    stack = Stack.recorded(item, sandbox_id, await probe(conn, item, sandbox_id))
    if stack is None:
        raise SandboxNotFound(
            f"compose sandbox {sandbox_id} has no directory with a recorded compose file on "
            f"host {item.name}; create it again or tear it down",
            sandbox_id=sandbox_id,
            extension=EXTENSION,
        )
    services = await stack.services(conn)
    chosen = service if service is not None else (services[0] if services else None)
    if chosen is None or chosen not in services:
        raise InvalidInput(
            f"compose sandbox {sandbox_id} has no service {chosen!r}; its services are "
            f"{', '.join(services) or 'none'} (pass one with --service NAME)",
            sandbox_id=sandbox_id,
            extension=EXTENSION,
        )

    async def run(name: str, value: str) -> int:
        # The marker twice: in the container (-e) and on the host, for the engine's client.
        kill = kill_argv(name, value)
        # A killed worker stops nothing: the host does (as stop below), when the channel closes.
        in_container = stack.argv("exec", "-T", chosen, *kill)
        on_close = on_close_line(
            command_line(in_container, env=item.config.env, cwd=stack.directory),
            command_line(kill),
        )
        return await stream(
            conn,
            stack.argv("exec", "-T", "-e", f"{name}={value}", chosen, *argv),
            output,
            env={**item.config.env, name: value},
            cwd=stack.directory,
            stdin=stdin,
            on_close=on_close,
        )

    async def stop(kill: list[str]) -> object:
        await stack.run(conn, "exec", "-T", chosen, *kill, timeout=STOP_TIMEOUT, check=False)
        return await remote.run(conn, kill, timeout=STOP_TIMEOUT, check=False)

    # The engine leaves an exec's process running when its client dies: given up (timeout,
    # client gone), what the command started in the container is killed there, then the
    # engine's client on the host (podman's lingers a moment otherwise).
    return await stoppable(run, stop, what=f"exec in {sandbox_id}")
