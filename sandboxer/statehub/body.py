"""What the State Hub receives for each lifecycle event: pure, no I/O.

A lifecycle event alone does not say everything the hub is sent (``destroyed``
names no profile, ``ready`` no extension), so the projection folds a small
:class:`SandboxContext` per sandbox from the events before it: the profile and
the consumer from ``requested``, the extension and host from ``routed`` (again
after a fallback reroutes) and ``provisioning``. A snapshot's ``created`` is
sent with the context of the sandbox its ``snapshot_requested`` names.

The body's shape is docs/integrations/state-hub.md; a test checks the page's
example against :func:`hub_body`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import msgspec

from sandboxer.events.types import (
    Event,
    SandboxEvent,
    SandboxFailed,
    SandboxProvisioning,
    SandboxRequested,
    SandboxRouted,
    SnapshotCreated,
    SnapshotRequested,
    event_type,
)

__all__ = [
    "BODY_VERSION",
    "CONTEXT_TYPES",
    "DELIVERED_TYPES",
    "SandboxContext",
    "fold_context",
    "hub_body",
]

BODY_VERSION = 1
"""The body's ``v``: a later version only adds fields (docs/integrations/state-hub.md)."""

DELIVERED_TYPES = (
    "requested",
    "provisioning",
    "ready",
    "active",
    "expired",
    "failed",
    "destroying",
    "destroyed",
    "snapshot_created",
)
"""The event types the State Hub receives (their tags in the log)."""

CONTEXT_TYPES = ("requested", "routed", "provisioning")
"""The sandbox events a body's context is folded from."""


@dataclass(frozen=True)
class SandboxContext:
    """What the hub is told about a sandbox beside the event itself."""

    sandbox_id: str
    profile_id: str | None = None
    extension_id: str | None = None
    host: str | None = None
    consumer: dict[str, Any] | None = None
    """Who asked for the sandbox (the ``requested`` actor) and, when the create named one, its
    consumer's ``harness``, ``session_id``, ``run_id``, ``job_id`` and ``labels``."""
    requested_at: str | None = None


def fold_context(context: SandboxContext, event: Event) -> SandboxContext:
    """``context`` after ``event`` (events of other kinds leave it as it is). Each step only
    sets fields, so folding the same event twice (a redelivery) changes nothing."""
    if isinstance(event, SandboxRequested):
        actor = event.actor
        return dataclasses.replace(
            context,
            profile_id=event.profile,
            consumer={
                "actor_id": actor.id,
                "actor_type": actor.type,
                "project": actor.project,
                # The create's consumer (docs/protocol.md#consumer-attribution), when it named one.
                **(msgspec.to_builtins(event.consumer) if event.consumer is not None else {}),
            },
            requested_at=event.at,
        )
    if isinstance(event, SandboxRouted):
        return dataclasses.replace(context, extension_id=event.extension, host=event.host)
    if isinstance(event, SandboxProvisioning):
        return dataclasses.replace(context, extension_id=event.extension)
    return context


def _detail(event: Event) -> dict[str, Any]:
    """A few fields of the event that a dashboard shows (what failed, why it went)."""
    if isinstance(event, SandboxFailed):
        return {"reason": event.reason, "stage": event.stage, "code": event.code}
    if isinstance(event, SnapshotCreated):
        return {"size": event.size, "sha256": event.sha256}
    fields = {name: getattr(event, name, None) for name in ("cause", "due_at", "reason")}
    return {name: value for name, value in fields.items() if value is not None}


def hub_body(
    event: SandboxEvent | SnapshotCreated, context: SandboxContext, stream_seq: int
) -> dict[str, Any]:
    """The JSON object POSTed for ``event`` (its type is in :data:`DELIVERED_TYPES`), stored
    at ``stream_seq``, about the sandbox ``context`` describes."""
    return {
        "v": BODY_VERSION,
        "event_id": event.event_id,
        "type": event_type(event),
        "sandbox_id": context.sandbox_id,
        "snapshot_id": event.snapshot_id if isinstance(event, SnapshotCreated) else None,
        "profile_id": context.profile_id,
        "extension_id": context.extension_id,
        "host": context.host,
        "consumer": context.consumer,
        "actor_type": event.actor.type,
        "actor_id": event.actor.id,
        "command_id": event.command_id,
        "at": event.at,
        "requested_at": context.requested_at,
        "stream_seq": stream_seq,
        "detail": _detail(event),
    }


def snapshot_source(event: Event) -> str | None:
    """The sandbox a snapshot was taken of, from its ``snapshot_requested``."""
    return event.sandbox_id if isinstance(event, SnapshotRequested) else None
