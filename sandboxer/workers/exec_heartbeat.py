"""How an exec's client tells a worker that went silent from a command that is quiet. Pure.

A worker killed with ``kill -9``, or whose host vanished, sends no ``exit``: without
more, its client would wait on silence until its own timeout (an hour for ``sandboxer
exec``). But a running worker is never silent for long: every ``CLIENT_CHECK_INTERVAL``
seconds it sends its ``alive`` check to the exec's inbox (:mod:`.exec_service`), and
that check doubles as its heartbeat. Its ``started`` message promises so in the header
:data:`HEADER`, whose value is the most seconds it stays silent while the command runs.
A client that then hears nothing at all (no output, no ``alive``) for :data:`MISSES`
such spells gives up, saying the worker stopped answering.

A worker older than the header promises nothing, so its client waits as clients always
did: for the ``exit``, until its own timeout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["HEADER", "MISSES", "allowed_silence"]

HEADER = "Sandboxer-Exec-Heartbeat"
MISSES = 3
"""Heartbeats a client lets pass unheard before it takes the worker for gone: one lost to
a reconnect of either side is not enough."""


def allowed_silence(headers: Mapping[str, str] | None) -> float | None:
    """Seconds of silence after which a client stops waiting, from the ``started``
    message's ``headers``; None (wait as before) when the worker promised no heartbeat,
    or promised one this client cannot read."""
    try:
        every = float((headers or {})[HEADER])
    except (KeyError, ValueError):
        return None
    if not math.isfinite(every) or every <= 0:
        return None
    return every * MISSES
