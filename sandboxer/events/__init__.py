"""Events: the facts sandboxer appends to its log.

The types are in :mod:`sandboxer.events.types`; reading and writing stored
bytes (with upcasting of older versions) is :mod:`sandboxer.events.codec`.
"""

from sandboxer.events.codec import UnknownEventType, decode_event, encode_event
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
    SandboxRerouting,
    SandboxRouted,
    SandboxTeardownFailed,
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
    "SandboxRerouting",
    "SandboxRouted",
    "SandboxTeardownFailed",
    "UnknownEventType",
    "decode_event",
    "encode_event",
]
