"""A provider's own timeout kept at the sandbox's expiry after work that held off a retime.

A backend whose provider ends sandboxes on a timeout of its own
(:class:`~sandboxer.extensions.capabilities.TimeoutKeeper`) gets a ``retime`` job when a
``ttl_extended`` lands on a ``ready`` or ``active`` sandbox. An extension decided while the
sandbox was provisioning, pausing or being snapshotted sends none (the job the sandbox
waited for then was another), so the worker that ends that work moves the timeout itself:
left behind, the provider would end the sandbox at the old expiry while the log gives it
longer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sandboxer.bus.publish import is_unavailability
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.extensions.base import Extension
from sandboxer.extensions.capabilities import TimeoutKeeper

__all__ = ["follow_expiry"]

log = logging.getLogger(__name__)


async def follow_expiry(
    backend: Extension, state: SandboxState, explain: Callable[[BaseException], str]
) -> None:
    """Set the provider's timeout from ``state.expires_at`` (when ``backend`` keeps one and
    the sandbox runs). A refusal is logged: the next extension or resume tries again."""
    if not isinstance(backend, TimeoutKeeper) or state.expires_at is None:
        return
    if state.status not in {"ready", "active"}:
        return
    try:
        await backend.set_timeout(state.sandbox_id, state.expires_at, host=state.host)
    except Exception as exc:
        if is_unavailability(exc):
            raise
        log.warning(
            "sandbox %s: moving the provider's timeout to %s failed: %s",
            state.sandbox_id,
            state.expires_at,
            explain(exc),
        )
