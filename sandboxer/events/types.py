"""The event types of the public contract, as frozen msgspec Structs.

Each carries an explicit ``type`` tag that never changes with the class name,
a schema version ``v`` of its own type, the aggregate (``sandbox_id``), the
correlation id of the command that started the work (``command_id``), the
``actor`` and the time ``at``. New fields get defaults; field types never
change. A type whose shape must change gets a new ``v`` (redeclared on its
class) and an upcaster in :mod:`sandboxer.events.codec`, which is the only
place that reads stored bytes. Readers tolerate fields they do not know, so
adding one never breaks an older reader.

The types live by aggregate (:mod:`~sandboxer.events.sandbox_events`,
:mod:`~sandboxer.events.snapshot_events`, :mod:`~sandboxer.events.record_events`
for rejections and hosts, :mod:`~sandboxer.events.actor`); this module joins
them into the one :data:`Event` union that tags are unique across.
"""

from __future__ import annotations

from sandboxer.events.account_events import (
    ACCOUNT_EVENTS,
    AccountEvent,
    BudgetSet,
    ByokSet,
    CreditsAdded,
    CreditsReleased,
    CreditsReserved,
    UsageMetered,
)
from sandboxer.events.actor import (
    SYSTEM_ACTOR,
    Actor,
)
from sandboxer.events.consumer import ConsumerRecord, SetupRecord
from sandboxer.events.key_events import KEY_EVENTS, KeyCreated, KeyEvent, KeyRevoked
from sandboxer.events.place_events import PLACE_EVENTS, PlaceEvent, PlaceFreed, PlaceTaken
from sandboxer.events.pool_events import (
    POOL_EVENTS,
    PoolEvent,
    PoolMemberAdded,
    PoolMemberClaimed,
    PoolMemberReady,
    PoolMemberRemoved,
)
from sandboxer.events.record_events import (
    CommandRejected,
    HostEvent,
    HostInspected,
    HostReaped,
)
from sandboxer.events.sandbox_events import (
    NetworkRecord,
    SandboxActive,
    SandboxCreateAbandoned,
    SandboxDestroyed,
    SandboxDestroying,
    SandboxEvent,
    SandboxExpired,
    SandboxFailed,
    SandboxPaused,
    SandboxPauseFailed,
    SandboxPauseLimitReached,
    SandboxPausing,
    SandboxProvisioning,
    SandboxReady,
    SandboxRecreating,
    SandboxRequested,
    SandboxRerouting,
    SandboxResumed,
    SandboxResuming,
    SandboxRouted,
    SandboxSnapshotFinished,
    SandboxSnapshotStarted,
    SandboxTeardownFailed,
    SandboxTouched,
    SandboxTtlExtended,
)
from sandboxer.events.snapshot_events import (
    SNAPSHOT_EVENTS,
    SnapshotCreated,
    SnapshotDeleted,
    SnapshotEvent,
    SnapshotFailed,
    SnapshotRequested,
)

__all__ = [
    "ACCOUNT_EVENTS",
    "KEY_EVENTS",
    "NOT_SANDBOX_EVENTS",
    "PLACE_EVENTS",
    "POOL_EVENTS",
    "SNAPSHOT_EVENTS",
    "SYSTEM_ACTOR",
    "AccountEvent",
    "Actor",
    "BudgetSet",
    "ByokSet",
    "CommandRejected",
    "ConsumerRecord",
    "CreditsAdded",
    "CreditsReleased",
    "CreditsReserved",
    "Event",
    "HostEvent",
    "HostInspected",
    "HostReaped",
    "KeyCreated",
    "KeyEvent",
    "KeyRevoked",
    "NetworkRecord",
    "PlaceEvent",
    "PlaceFreed",
    "PlaceTaken",
    "PoolEvent",
    "PoolMemberAdded",
    "PoolMemberClaimed",
    "PoolMemberReady",
    "PoolMemberRemoved",
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
    "SnapshotCreated",
    "SnapshotDeleted",
    "SnapshotEvent",
    "SnapshotFailed",
    "SnapshotRequested",
    "UsageMetered",
    "event_type",
]

Event = (
    SandboxEvent
    | CommandRejected
    | HostEvent
    | SnapshotEvent
    | AccountEvent
    | KeyEvent
    | PoolEvent
    | PlaceEvent
)
NOT_SANDBOX_EVENTS = (
    CommandRejected,
    HostInspected,
    HostReaped,
    *SNAPSHOT_EVENTS,
    *ACCOUNT_EVENTS,
    *KEY_EVENTS,
    *POOL_EVENTS,
    *PLACE_EVENTS,
)
"""For ``isinstance``: events that do not belong to a sandbox aggregate."""


def event_type(event: Event) -> str:
    """The ``type`` tag of an event (also the last token of its subject)."""
    tag = type(event).__struct_config__.tag
    assert isinstance(tag, str)
    return tag
