"""stamina's own per-retry lines, turned off by each entry point before anything retries.

stamina logs every retry it schedules (a "stamina.retry_scheduled" line), with no detail
of what was retried. The places that retry say that themselves: the bus logs its
retries, and the CLI says what it waited for (a wait riding out a restarting service would
otherwise print a bare line per retry on the terminal).
"""

from __future__ import annotations

import stamina

__all__ = ["silence_retry_hooks"]


def silence_retry_hooks() -> None:
    """Turn off stamina's retry hooks for this process (the CLI's ``main``, ``serve``)."""
    stamina.instrumentation.set_on_retry_hooks([])
