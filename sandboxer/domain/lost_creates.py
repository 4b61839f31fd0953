"""A create taken for lost: something was held for its sandbox long ago, and still nothing
of the sandbox is in the log. Pure.

A create holds what it needs before its sandbox's first append: a host's place
(:mod:`~sandboxer.domain.host_places`), its project's credits
(:mod:`~sandboxer.domain.account_state`). Cut off in between, it is sent again until it is
appended or refused, and a refusal gives its id up and what it held back. One that is never
sent again (its message gone from the commands stream: past its deliveries, or purged) would
hold them for ever. So one held far longer than any delivery takes is given up: its id first
(``create_abandoned``, which any later ``requested`` of it is refused against), then what it
held.
"""

from __future__ import annotations

from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.domain.timestamps import seconds_between, shift

__all__ = ["STRANDED_SECONDS", "create_lost", "held_too_long", "job_orphaned", "lost_at"]

STRANDED_SECONDS = 600.0
"""How long something may be held for a sandbox with no events before its create is taken
for lost: far longer than a delivery of a create takes from its hold to its append (no I/O
but the log's). A create still being sent again after that (a long ``ack_wait``, a service
down meanwhile) is refused, its id given up, rather than appended on what was given back."""


def create_lost(sandbox: SandboxState, held_since: str | None, now: str) -> bool:
    """Whether the create that has held something for ``sandbox`` since ``held_since`` is
    taken for lost: the sandbox has no events, its id was not given up, and that was more
    than :data:`STRANDED_SECONDS` ago (never when the time is not known)."""
    return (
        sandbox.status == "new" and sandbox.abandoned_by is None and held_too_long(held_since, now)
    )


def job_orphaned(sandbox: SandboxState, stored_at: str, now: str) -> bool:
    """Whether a create's provision job, stored at ``stored_at`` and still ahead of what the
    log holds of ``sandbox``, is one whose events will never land: its create was given up
    (``create_abandoned``), or the job has waited for them for more than
    :data:`STRANDED_SECONDS`. A job goes out with its create's events (docs/protocol.md#jobs),
    so it may be stored when they were refused. The wait is far longer than the jobs
    stream's two-minute duplicate window: should the create still land after it, its job
    is published again as a new message, not dropped as a copy of this one."""
    return (sandbox.status == "new" and sandbox.abandoned_by is not None) or held_too_long(
        stored_at, now
    )


def held_too_long(held_since: str | None, now: str) -> bool:
    """Whether something held since ``held_since`` has been for more than
    :data:`STRANDED_SECONDS` (never when the time is not known)."""
    if not held_since:
        return False
    return seconds_between(held_since, now) > STRANDED_SECONDS


def lost_at(held_since: str) -> str:
    """When something held since ``held_since`` becomes held too long (:func:`held_too_long`
    past it), in the same format: timestamps of one format sort as text."""
    return shift(held_since, STRANDED_SECONDS)
