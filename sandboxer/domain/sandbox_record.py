"""The shape of the sandbox aggregate's state: what the log says about one sandbox.

Apart from :mod:`sandboxer.domain.sandbox_state` (``evolve`` and the folds, which
re-export these names) so that the modules ``evolve`` hands parts of its work to
(:mod:`sandboxer.domain.pause_folding`, :mod:`sandboxer.domain.usage`) can name the state
without importing ``evolve`` back.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import msgspec

from sandboxer.events.types import Actor, ConsumerRecord, NetworkRecord, SetupRecord

__all__ = ["LIVE", "SandboxState", "Status"]

Status = Literal[
    "new",
    "requested",
    "routed",
    "provisioning",
    "ready",
    "active",
    "failed",
    "recreating",
    "rerouting",
    "expired",
    "destroying",
    "destroyed",
    "pausing",
    "paused",
    "resuming",
]

LIVE = frozenset(get_args(Status)) - {"new", "destroying", "destroyed"}
"""States a destroy may leave."""


class SandboxState(msgspec.Struct, frozen=True, kw_only=True):
    """What the log says about one sandbox, folded from its events."""

    sandbox_id: str
    status: Status = "new"
    version: int = 0
    """Number of events applied."""
    profile: str | None = None
    profile_version: int | None = None
    inputs: dict[str, str] = {}
    extension: str | None = None
    host: str | None = None
    actor: Actor | None = None
    created_by: str | None = None
    """The create command's id."""
    abandoned_by: str | None = None
    """The create refused after its credit hold, whose ``create_abandoned`` gave up the id
    (the sandbox stays ``new``): no create of the id is made from then on."""
    correlation: str | None = None
    """The command whose work is under way (create, recreate or destroy): the ``command_id``
    of the events its jobs produce, so a client can wait for the outcome of its own command."""
    generation: int = 0
    attempt: int = 0
    reachability: dict[str, Any] | None = None
    warnings: list[str] = []
    failure: str | None = None
    teardown_failure: str | None = None
    """Why the last teardown failed, while the sandbox is stuck in ``destroying``."""
    ttl_seconds: float | None = None
    ttl_max_seconds: float | None = None
    """How long, from creation, extensions may keep the sandbox (the profile's ``ttl.max``)."""
    idle_reap_seconds: float | None = None
    expires_at: str | None = None
    """When the TTL runs out: creation plus the TTL, moved by each ``ttl_extended``."""
    expiry_moved_at: int | None = None
    """The version of the last ``ttl_extended``: a backend whose provider keeps its own
    timeout is sent a ``retime`` job to follow it (workers/jobs.py)."""
    last_activity_at: str | None = None
    """The last recorded activity (``ready`` counts as the first), for idle reaping."""
    expiry: str | None = None
    """Why the sandbox expired (``ttl``, ``idle`` or ``forced``), once it has."""
    recreated_by: str | None = None
    """Lineage: the command id of the latest recreate, whose events made this generation."""
    recreated_at: str | None = None
    restored_from: str | None = None
    """Lineage: the snapshot a restore made this sandbox from."""
    max_pause_seconds: float | None = None
    """The profile's ``ttl.max_pause`` at creation: the longest a pause may last."""
    paused_at: str | None = None
    """When the current pause began (``paused``), while paused or resuming."""
    paused_from: Literal["ready", "active"] | None = None
    """The status a pause left, which ``resumed`` (or a failed pause) returns to."""
    paused_seconds: float = 0.0
    """The length of every finished pause, which ``ttl.max`` does not count either."""
    refused_by: tuple[str, ...] = ()
    """Backends that refused this provision (``rerouting``), skipped by its fallback; cleared
    once the sandbox is ready or recreated."""
    snapshotting: str | None = None
    """The snapshot being taken of this sandbox, from ``snapshot_started`` to
    ``snapshot_finished``; a teardown waits for it (see ``domain/sandbox_snapshots.py``)."""
    billable_seconds: float = 0.0
    """Time the sandbox could be used in spans that ended: from ``ready`` (or ``resumed``) to
    the next pause, recreate, failure, expiry or destroy (``sandboxer.domain.usage``)."""
    billing_since: str | None = None
    """The start of the billable span that is open (None while not billed)."""
    handled: tuple[str, ...] = ()
    """Ids of the commands already decided, so a re-sent command decides nothing.
    A tuple in log order (not a set) so that the stored state is byte-for-byte reproducible."""
    created_at: str | None = None
    updated_at: str | None = None
    network: NetworkRecord | None = None
    """The network policy in force (docs/network.md), as ``requested`` recorded it; None for
    a sandbox requested before policies were recorded (its profile's policy applies)."""
    setup: list[SetupRecord] = []
    """The profile's setup commands as the latest ``ready`` recorded them (exit codes and
    redacted output tails; docs/profiles.md#setup-commands)."""
    consumer: ConsumerRecord | None = None
    """Who the sandbox is for, as ``requested`` recorded it (docs/protocol.md#consumer-attribution)."""
    provider_key: str | None = None
    """The provider key the latest ``routed`` chose (see ``SandboxRouted.provider_key``)."""
