"""Facts of no aggregate: rejected commands and jobs, and host telemetry and reaping."""

from __future__ import annotations

from typing import Any

import msgspec

from sandboxer.events.actor import Actor

__all__ = [
    "CommandRejected",
    "HostEvent",
    "HostInspected",
    "HostReaped",
]


class CommandRejected(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="rejected"):
    """A command could not be accepted; ``reason`` says why and what to do."""

    v: int = 1
    event_id: str = ""
    command_id: str | None
    """The command's id, or None when it could not be read."""
    command: str
    """The verb from the subject, e.g. ``create``."""
    code: str
    reason: str
    sandbox_id: str | None = None
    stream_seq: int | None = None
    """Sequence of the message in its stream (the key when the id is unreadable)."""
    stream: str | None = None
    """The stream the rejected message came from, when not the commands stream (a job)."""
    actor: Actor | None = None
    at: str
    retry_after: float | None = None
    """Seconds to wait before sending the command again, when waiting is the fix (a key past
    its rate on the bus, ``rate_limited``); None otherwise, as in every rejection stored
    before the field was added."""


class _HostEventBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    v: int = 1
    event_id: str = ""
    host: str
    """A host name from the hosts file, or ``local-<hostname>`` for ext.local's machine."""
    extension: str
    actor: Actor
    at: str


class HostInspected(_HostEventBase, frozen=True, kw_only=True, tag="inspected"):
    """Telemetry read from a host: load, memory, disk, and the sandboxer objects found there."""

    report: dict[str, Any]


class HostReaped(_HostEventBase, frozen=True, kw_only=True, tag="reaped"):
    """``reap-stale --apply`` removed orphans from a host and marked vanished sandboxes failed;
    or (actor ``sandboxer-leak-sweep``) an extension worker's periodic leak sweep removed
    leaks there: copies, earlier attempts' copies, failed or destroyed sandboxes' leftovers."""

    removed: list[str] = []
    """Sandboxes found on the host that the log had destroyed, failed or never knew."""
    marked_failed: list[str] = []
    """Sandboxes the log called ready whose resources were gone from the host."""


HostEvent = HostInspected | HostReaped
