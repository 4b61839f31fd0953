"""What a worker's refusal of an exec or a copy raises in a client, by its ``code``.

An exec's ``exit`` and a copy's ``done`` carry the reason in words (``error``) and, for the
refusals a caller can act on, a ``code`` (docs/protocol.md#exec, #files). Both clients, the
bus client's exec and :mod:`sandboxer.transfer`'s copies, raise the same error for the same
code, so the gateway answers both alike (docs/http-api.md#exec-and-files).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sandboxer.domain.rate_limit import stated_wait
from sandboxer.errors import (
    CommandFailed,
    ConfigError,
    InvalidInput,
    PathRefused,
    RateLimited,
    SandboxerError,
    ServiceNotRunning,
    Unsupported,
    WorkspaceRefused,
)

__all__ = ["FROZEN", "RATE_LIMITED", "WORKER_STOPPED", "error_for"]

FROZEN = "frozen"
"""The sandbox is paused (or pausing, resuming): nothing runs in it until it is resumed."""
WORKER_STOPPED = "worker_stopped"
"""The worker stopped (its shutdown) while it served the request, and stopped it."""
RATE_LIMITED = "rate_limited"
"""An API key's request past its rate (bus/key_request_rate.py): nothing was done; the
answer's ``retry_after`` says when to ask again."""


def _state_conflict(message: str, *, sandbox_id: str) -> CommandFailed:
    """What the sandbox's state does not allow (paused): refused as a command is, so both
    transports raise the same (the gateway answers 409, which the HTTP client reads back as
    this rejection)."""
    rejected = {"type": "rejected", "code": FROZEN, "reason": message, "sandbox_id": sandbox_id}
    return CommandFailed(message, rejected)


_ERRORS: dict[str, Callable[..., SandboxerError]] = {
    "path_refused": PathRefused,
    "workspace_refused": WorkspaceRefused,
    "invalid_input": InvalidInput,
    "unsupported": Unsupported,
    FROZEN: _state_conflict,
    # A project's own provider key the worker may not use (BYOK): set up wrong, not failed.
    "config": ConfigError,
    # Stopped at the worker's shutdown: a copy left nothing, and is safe to send again once a
    # worker is back; an exec's command was killed (the gateway answers 503 with
    # Retry-After, as for no worker at all).
    WORKER_STOPPED: ServiceNotRunning,
}


def error_for(answer: Mapping[str, Any], sandbox_id: str) -> SandboxerError | None:
    """The error the ``code`` of a refusing ``answer`` (an exec's ``exit``, a copy's
    ``done``) names, with its ``error`` as the message (None: a code with no error of its
    own, or none: the caller raises its default, a copy's ExtensionError, an exec's
    CommandFailed)."""
    message, code = str(answer.get("error")), answer.get("code")
    if code == RATE_LIMITED:
        return RateLimited(message, retry_after=stated_wait(answer))
    make = _ERRORS.get(code if isinstance(code, str) else "")
    return make(message, sandbox_id=sandbox_id) if make is not None else None
