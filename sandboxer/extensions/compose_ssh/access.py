"""How a client that logged in to the host runs a command in a compose sandbox's service.

The ``enter`` of the ready event's ``ssh`` access (docs/protocol.md#reachability):
the same compose command sandboxer's own exec runs, with the host's ``env``, so a
client with its own SSH access to the host needs nothing from sandboxer to get in.
"""

from __future__ import annotations

import shlex

from sandboxer.extensions.compose_ssh import containers
from sandboxer.extensions.compose_ssh.stack import Stack

__all__ = ["enter"]


def enter(stack: Stack) -> str:
    """``[ENV=...] COMPOSE -p PROJECT -f FILE exec -T SERVICE CMD`` for the stack's host: the
    words ``SERVICE`` and ``CMD`` are placeholders, everything else is quoted for ``sh``."""
    config = stack.target.config
    argv = containers.compose_argv(config, stack.project, stack.compose_path, "exec", "-T")
    env = [f"{name}={shlex.quote(value)}" for name, value in sorted(config.env.items())]
    return " ".join([*env, shlex.join(argv), "SERVICE", "CMD"])
