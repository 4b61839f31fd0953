"""The sandbox aggregate's events (``sandboxer.evt.sandbox.<id>.<type>``)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from sandboxer.events.actor import Actor
from sandboxer.events.consumer import ConsumerRecord, SetupRecord

__all__ = [
    "ConsumerRecord",
    "NetworkRecord",
    "SandboxActive",
    "SandboxCreateAbandoned",
    "SandboxDestroyed",
    "SandboxDestroying",
    "SandboxEvent",
    "SandboxExpired",
    "SandboxFailed",
    "SandboxPauseFailed",
    "SandboxPauseLimitReached",
    "SandboxPaused",
    "SandboxPausing",
    "SandboxProvisioning",
    "SandboxReady",
    "SandboxRecreating",
    "SandboxRequested",
    "SandboxRerouting",
    "SandboxResumed",
    "SandboxResuming",
    "SandboxRouted",
    "SandboxSnapshotFinished",
    "SandboxSnapshotStarted",
    "SandboxTeardownFailed",
    "SandboxTouched",
    "SandboxTtlExtended",
    "SetupRecord",
]


class _SandboxEventBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    v: int = 1
    """Schema version of this event type; a type that changes shape redeclares it."""
    event_id: str = ""
    """Unique id, also the ``Nats-Msg-Id`` of the append; set by the event store."""
    sandbox_id: str
    command_id: str
    """Correlation: the command whose processing produced this event."""
    causation_id: str | None = None
    """The event or job that directly caused this one, when not the command itself."""
    actor: Actor
    at: str
    """UTC time, ISO 8601 with milliseconds."""


class NetworkRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The network policy in force for a sandbox (docs/network.md): ``default`` and each
    egress entry in its canonical compact form (``pypi.org:443``, ``10.0.0.0/8/udp``)."""

    default: Literal["deny", "allow"] = "deny"
    egress: list[str] = []


class SandboxRequested(_SandboxEventBase, frozen=True, kw_only=True, tag="requested"):
    """A create was accepted: the profile exists and the inputs satisfy it."""

    profile: str
    profile_version: int
    inputs: dict[str, str] = {}
    ttl_seconds: float | None = None
    """Lifetime from this event's time; the sandbox expires when it runs out."""
    ttl_max_seconds: float | None = None
    """The profile's ``ttl.max`` at admission: how far extensions may push the expiry
    (counted from this event's time). Recorded so that deciding an extension stays pure."""
    idle_reap_seconds: float | None = None
    """The profile's ``ttl.idle_reap`` at admission: a ready sandbox without activity for
    this long expires."""
    restored_from: str | None = None
    """Lineage: the snapshot this sandbox was restored from (its object is the directory input)."""
    max_pause_seconds: float | None = None
    """The profile's ``ttl.max_pause`` at admission: a sandbox paused this long expires
    (``pause_limit_reached``). None: a pause may last as long as its TTL would have."""
    network: NetworkRecord | None = None
    """The network policy in force: the profile's, or the narrower one the create asked
    for. None in events recorded before policies were (the profile's policy applies)."""
    consumer: ConsumerRecord | None = None
    """Who the sandbox is for (the create's or restore's ``consumer``); None when it named
    none, and in events recorded before consumers were."""


class SandboxRouted(_SandboxEventBase, frozen=True, kw_only=True, tag="routed"):
    """Routing chose the backend (and, for remote backends, the host)."""

    extension: str
    reason: str
    candidates: list[str] = []
    host: str | None = None
    scores: list[dict[str, Any]] = []
    """Every candidate routing weighed: ``extension``, ``eligible``, ``why_not``, ``score``
    (lower is better) and what it came from (docs/routing.md#the-routed-event)."""
    provider_key: str | None = None
    """The key every provider call for this sandbox uses, chosen once with its credits:
    ``operator`` (the backend's own key; the sandbox is paid from credits) or the project's
    own key's reference (``env:``/``file:``; BYOK). None on a backend that takes no key, and
    in events stored before it was recorded (the account's current key is used then)."""


class SandboxCreateAbandoned(_SandboxEventBase, frozen=True, kw_only=True, tag="create_abandoned"):
    """The create ``command_id`` held credits for this id and was then refused (``code``,
    ``reason``: the refusal's) before anything of the sandbox was appended: a create cut off
    between its hold and its append (kill -9, a conflict), sent again and refused, or one
    whose handling kept failing. Appended before its hold is given back (``credits_released``
    on its account), so no delivery of that create, nor any other create of the id, can be
    appended after: the id is never used. The sandbox stays ``new`` (it does not exist)."""

    code: str
    reason: str


class SandboxProvisioning(_SandboxEventBase, frozen=True, kw_only=True, tag="provisioning"):
    """A worker started establishing the sandbox (``attempt`` counts redeliveries)."""

    extension: str
    attempt: int = 1
    generation: int = 1
    worker: str | None = None


class SandboxReady(_SandboxEventBase, frozen=True, kw_only=True, tag="ready"):
    """The sandbox can be used; ``reachability`` says how to reach it."""

    reachability: dict[str, Any]
    warnings: list[str] = []
    generation: int = 1
    network: NetworkRecord | None = None
    """The network policy the sandbox runs under (that of ``requested``); None in events
    recorded before policies were."""
    setup: list[SetupRecord] = []
    """The profile's ``setup.commands`` as they ran before this ``ready``: exit codes and
    redacted output tails (docs/profiles.md#setup-commands)."""
    pool_member: str | None = None
    """The warm pool member this sandbox was claimed from (docs/pools.md); None when it was
    made for this create, and in events recorded before pools were."""


class SandboxFailed(_SandboxEventBase, frozen=True, kw_only=True, tag="failed"):
    """Establishing the sandbox failed; whatever was made has been torn down."""

    reason: str
    stage: Literal["admission", "routing", "provision", "wait_ready", "teardown", "job"]
    retryable: bool = False
    """Trying again later, or on another backend, may succeed (a provider's quota or outage)."""
    code: str | None = None
    """What failed, as an error code (``provider_quota``, ``provider_unavailable``,
    ``provider_auth``, ``invalid_input``, ...) when known; routing reads it."""


class SandboxRerouting(_SandboxEventBase, frozen=True, kw_only=True, tag="rerouting"):
    """The backend refused the sandbox in a way another may not (a quota refusal, an outage
    after retries); what it made is torn down, and the next candidate is to be routed."""

    extension: str
    """The backend that refused."""
    reason: str
    code: str | None = None


class SandboxRecreating(_SandboxEventBase, frozen=True, kw_only=True, tag="recreating"):
    """A recreate was accepted: the sandbox is torn down and provisioned again."""


class SandboxDestroying(_SandboxEventBase, frozen=True, kw_only=True, tag="destroying"):
    """A destroy was accepted; teardown is under way."""

    reason: str = "requested"


class SandboxDestroyed(_SandboxEventBase, frozen=True, kw_only=True, tag="destroyed"):
    """Everything the sandbox owned is gone."""


class SandboxActive(_SandboxEventBase, frozen=True, kw_only=True, tag="active"):
    """The first activity (an exec, a touch) after ``ready``: the sandbox is in use."""


class SandboxTouched(_SandboxEventBase, frozen=True, kw_only=True, tag="touched"):
    """Later activity on an active sandbox; recorded at most once per touch interval
    (see ``sandboxer.domain.deadlines``), so activity never floods the log."""


class SandboxTtlExtended(_SandboxEventBase, frozen=True, kw_only=True, tag="ttl_extended"):
    """The sandbox's lifetime was extended; it now expires at ``expires_at``."""

    expires_at: str
    by_seconds: float


class SandboxExpired(_SandboxEventBase, frozen=True, kw_only=True, tag="expired"):
    """The sandbox outlived its TTL (``ttl``), its idle limit (``idle``), or an ``adm`` actor
    expired it early (``forced``). A ``destroying`` follows in the same append."""

    cause: Literal["ttl", "idle", "forced"]
    due_at: str | None = None
    """The deadline that ran out (None when forced before any deadline)."""
    note: str | None = None
    """The expire command's free-text reason, if it gave one."""


class SandboxTeardownFailed(_SandboxEventBase, frozen=True, kw_only=True, tag="teardown_failed"):
    """Teardown kept failing: the sandbox stays ``destroying`` and is shown as stuck.

    ``sandboxer reap-stale --apply`` tries the teardown again; a later
    ``destroyed`` clears the mark.
    """

    reason: str


class SandboxSnapshotStarted(_SandboxEventBase, frozen=True, kw_only=True, tag="snapshot_started"):
    """A snapshot of this sandbox was accepted (its own events are under ``snapshot_id``).

    Recorded on the sandbox so that a snapshot and a destroy of one sandbox are
    ordered by the sandbox's own sequence: until ``snapshot_finished``, the
    teardown a later destroy asks for waits for the copy to end.
    """

    snapshot_id: str


class SandboxSnapshotFinished(
    _SandboxEventBase, frozen=True, kw_only=True, tag="snapshot_finished"
):
    """The snapshot started on this sandbox ended (``created`` or ``failed`` on the snapshot)."""

    snapshot_id: str
    outcome: Literal["created", "failed"]


class SandboxPausing(_SandboxEventBase, frozen=True, kw_only=True, tag="pausing"):
    """A pause was accepted: the backend's worker is freezing every process of the sandbox.
    The TTL clock still runs until ``paused``."""


class SandboxPaused(_SandboxEventBase, frozen=True, kw_only=True, tag="paused"):
    """Every process of the sandbox is frozen. Its TTL and idle clocks stop at ``at``; its
    profile's ``ttl.max_pause`` (recorded in ``requested``) counts from here."""


class SandboxResuming(_SandboxEventBase, frozen=True, kw_only=True, tag="resuming"):
    """A resume was accepted: the backend's worker is thawing the sandbox (its clocks stay
    stopped until ``resumed``)."""


class SandboxResumed(_SandboxEventBase, frozen=True, kw_only=True, tag="resumed"):
    """The sandbox runs again, as ready or active as it was before the pause. Its clocks
    restart: the TTL's deadline moved later by the pause's length."""

    paused_seconds: float
    """How long this pause lasted (from ``paused`` to this event)."""
    expires_at: str | None = None
    """The TTL's deadline after the pause (the one before it, plus ``paused_seconds``)."""


class SandboxPauseFailed(_SandboxEventBase, frozen=True, kw_only=True, tag="pause_failed"):
    """The backend could not pause (the sandbox stays as it was) or resume it (it stays
    paused, and a resume may be tried again)."""

    operation: Literal["pause", "resume"]
    reason: str


class SandboxPauseLimitReached(
    _SandboxEventBase, frozen=True, kw_only=True, tag="pause_limit_reached"
):
    """The sandbox stayed paused past its profile's ``ttl.max_pause``: it expired (status
    ``expired``) and a ``destroying`` follows in the same append. (A type of its own rather
    than a new ``cause`` of ``expired``, which readers of that type would not know.)"""

    paused_at: str
    max_pause_seconds: float
    due_at: str
    note: str | None = None
    """The expire command's free-text reason, if it gave one."""


SandboxEvent = (
    SandboxRequested
    | SandboxRouted
    | SandboxCreateAbandoned
    | SandboxProvisioning
    | SandboxReady
    | SandboxFailed
    | SandboxRecreating
    | SandboxRerouting
    | SandboxDestroying
    | SandboxDestroyed
    | SandboxTeardownFailed
    | SandboxActive
    | SandboxTouched
    | SandboxTtlExtended
    | SandboxExpired
    | SandboxSnapshotStarted
    | SandboxSnapshotFinished
    | SandboxPausing
    | SandboxPaused
    | SandboxResuming
    | SandboxResumed
    | SandboxPauseFailed
    | SandboxPauseLimitReached
)
