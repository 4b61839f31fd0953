"""A refused or failed command as :class:`sandboxer.client.Sandboxer` raises it, on both
transports alike (the bus transport from the rejection event, the HTTP transport from the
event in the gateway's error answer). Pure: no I/O."""

from __future__ import annotations

from typing import Any

from sandboxer.domain.rate_limit import stated_wait
from sandboxer.errors import CommandFailed, NotFound, RateLimited, SandboxerError

__all__ = ["rejection_error"]

NOT_FOUND_CODES = frozenset({"unknown_sandbox", "unknown_snapshot", "unknown_account"})
"""Rejections that name nothing (an unknown profile stays a rejected command: its name is
the client's mistake, not a resource that is gone)."""
LIMIT_CODES = frozenset({"live_limit", "rate_limited"})
"""A key's limits: a rejection with one of these is :class:`RateLimited`."""
LIMIT_RETRY_AFTER = 30.0
"""What the gateway's Retry-After says for a key's live limit (gateway/errors.RETRY_AFTER),
the wait of a limit's rejection that says none."""


def rejection_error(
    message: str,
    event: dict[str, Any],
    *,
    sandbox_id: str | None = None,
    retry_after: float | None = None,
) -> SandboxerError:
    """A rejection that names nothing NotFound, one for a key's limit RateLimited, any other
    refused or failed command CommandFailed (its ``event`` says why)."""
    code = event.get("code")
    if event.get("type") == "rejected" and isinstance(code, str):
        if code in NOT_FOUND_CODES:
            return NotFound(message, code=code, sandbox_id=sandbox_id)
        if code in LIMIT_CODES:
            if retry_after is None:
                retry_after = stated_wait(event) or LIMIT_RETRY_AFTER
            return RateLimited(message, code=code, retry_after=retry_after)
    return CommandFailed(message, event)
