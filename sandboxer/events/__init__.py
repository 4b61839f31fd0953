"""Events: the facts sandboxer appends to its log. See :mod:`sandboxer.events.types`."""

from sandboxer.events.types import (
    Actor,
    CommandRejected,
    SandboxDestroyed,
    SandboxDestroying,
    SandboxEvent,
    SandboxFailed,
    SandboxProvisioning,
    SandboxReady,
    SandboxRecreating,
    SandboxRequested,
    SandboxRouted,
    decode_event,
    encode_event,
)

__all__ = [
    "Actor",
    "CommandRejected",
    "SandboxDestroyed",
    "SandboxDestroying",
    "SandboxEvent",
    "SandboxFailed",
    "SandboxProvisioning",
    "SandboxReady",
    "SandboxRecreating",
    "SandboxRequested",
    "SandboxRouted",
    "decode_event",
    "encode_event",
]
