"""Who may read a sandbox's provider-issued tokens (pure).

The sandbox's own actor, anyone of its project, and administrators. Until the
bus authenticates actors (the access-control work), an actor is what a
client claims; this rule is then enforced on proven identities unchanged.
"""

from __future__ import annotations

from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.events.actor import Actor

__all__ = ["token_refusal"]


def token_refusal(requester: Actor, state: SandboxState) -> str | None:
    """None when ``requester`` may read the tokens, else why not."""
    owner = state.actor
    if requester.type == "adm":
        return None
    if owner is not None and (owner.type, owner.id) == (requester.type, requester.id):
        return None
    if owner is not None and owner.project and owner.project == requester.project:
        return None
    return (
        f"sandbox {state.sandbox_id}'s tokens go only to the actor that created it, "
        "its project, or an administrator"
    )
