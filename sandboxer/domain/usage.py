"""Billable time of a sandbox, folded from its events. Pure.

A sandbox is billed while it can be used: from each ``ready`` (or ``resumed``)
to the next event that takes that away: ``paused``, ``recreating``,
``rerouting``, ``failed``, ``expired``, ``pause_limit_reached``,
``destroying`` (or ``destroyed``). So provisioning, a pause, and the time a
teardown takes are never billed. :func:`billing_step` is called by the
sandbox's ``evolve`` for every event and keeps two fields of its state:
``billable_seconds`` (the spans that ended) and ``billing_since`` (the start of
the span that is open, or None).

The meter bills whole seconds, rounded up (:func:`billed_seconds`).
"""

from __future__ import annotations

import math

from sandboxer.domain.sandbox_record import SandboxState
from sandboxer.domain.timestamps import seconds_between

__all__ = ["BILLING_STARTS", "BILLING_STOPS", "billable_seconds", "billed_seconds", "billing_step"]

BILLING_STARTS = frozenset({"ready", "resumed"})
"""Event types after which the sandbox can be used, so it costs."""

BILLING_STOPS = frozenset(
    {
        "paused",
        "recreating",
        "rerouting",
        "failed",
        "expired",
        "pause_limit_reached",
        "destroying",
        "destroyed",
    }
)
"""Event types after which it cannot be used (until a later ``ready`` or ``resumed``)."""


def billing_step(
    billable: float, since: str | None, event_type: str, at: str
) -> tuple[float, str | None]:
    """``(billable_seconds, billing_since)`` after an event of ``event_type`` at ``at``."""
    if event_type in BILLING_STARTS:
        return billable, since if since is not None else at
    if event_type in BILLING_STOPS and since is not None:
        return billable + max(0.0, seconds_between(since, at)), None
    return billable, since


def billable_seconds(state: SandboxState, now: str | None = None) -> float:
    """The billable time so far: the ended spans, plus the open one up to ``now`` if given."""
    open_span = 0.0
    if state.billing_since is not None and now is not None:
        open_span = max(0.0, seconds_between(state.billing_since, now))
    return state.billable_seconds + open_span


def billed_seconds(seconds: float) -> int:
    """Whole seconds charged for ``seconds`` of use: rounded up (a started second counts).
    A millisecond's float noise is forgiven first, so 2.0000000001 s is 2 s."""
    return max(0, math.ceil(round(seconds, 3)))
