"""Who may read a sandbox's provider-issued tokens (pure).

Whoever may reach the sandbox otherwise (exec, files, queries): anyone of its
project, and administrators, by :func:`~sandboxer.domain.key_access.may_see`,
the one rule. A sandbox whose creator names no project is project ``default``'s
(docs/payments.md#accounts), for its tokens as for everything else: this rule
once shared such a sandbox with its exact creator only, so a key of project
``default`` could run commands in it and not read its tokens. Until the bus
authenticates actors, an actor is what a client claims; an API key is asked as
itself (workers/key_reach.py).
"""

from __future__ import annotations

import msgspec

from sandboxer.domain.key_access import may_see, sandbox_project
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.events.actor import Actor

__all__ = ["token_refusal"]


def token_refusal(requester: Actor, state: SandboxState) -> str | None:
    """None when ``requester`` may read the tokens, else why not."""
    if may_see(msgspec.to_builtins(requester), sandbox_project(state)):
        return None
    return (
        f"sandbox {state.sandbox_id}'s tokens go only to its project "
        "(its creator's, default when it names none) or an administrator"
    )
