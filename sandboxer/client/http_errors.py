"""The HTTP API's error answers as errors of the one tree (sandboxer/errors.py).

The gateway answers every error as ``{"error": {"code", "message", "details"}}``
(docs/http-api.md#errors). This maps it to the exception the bus client raises
for the same cause, so code written against :class:`sandboxer.client.Sandboxer`
handles both transports alike: a rejected or failed command is
:class:`CommandFailed` with the event, what does not exist :class:`NotFound`,
the key's refusals :class:`AccessDenied` and :class:`RateLimited`. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sandboxer.client.rejections import rejection_error
from sandboxer.errors import (
    AccessDenied,
    BusError,
    CommandFailed,
    ExtensionError,
    InvalidInput,
    NotFound,
    PathRefused,
    RateLimited,
    RequestError,
    SandboxerError,
    ServiceNotRunning,
    Unsupported,
    ViewBehind,
    WorkerLost,
    WorkspaceRefused,
)

__all__ = ["error_for", "parse_retry_after"]

_INPUT_ERRORS: dict[str, type[InvalidInput]] = {
    "path_refused": PathRefused,
    "workspace_refused": WorkspaceRefused,
}

_UNAVAILABLE: dict[str, type[BusError]] = {
    "service_not_running": ServiceNotRunning,
    "view_behind": ViewBehind,
    "worker_lost": WorkerLost,
}


def parse_retry_after(value: str | None) -> float | None:
    """Seconds of a ``Retry-After`` header (the gateway sends whole seconds); None otherwise."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


def _error_fields(body: Any) -> tuple[str | None, str | None, dict[str, Any]]:
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, None, {}
    code = error.get("code")
    message = error.get("message")
    details = error.get("details")
    return (
        code if isinstance(code, str) else None,
        message if isinstance(message, str) else None,
        details if isinstance(details, dict) else {},
    )


def error_for(
    status: int,
    body: Any,
    headers: Mapping[str, str] | None = None,
    *,
    sandbox_id: str | None = None,
) -> SandboxerError:
    """The error an HTTP error answer stands for (``body``: its decoded JSON, or None)."""
    code, message, details = _error_fields(body)
    code = code or f"http_{status}"
    message = message or f"the HTTP API answered {status} ({code})"
    event = details.get("event")
    retry_after = parse_retry_after((headers or {}).get("retry-after"))
    if isinstance(event, dict):  # a rejected or failed command: as the bus client raises it
        return rejection_error(message, event, sandbox_id=sandbox_id, retry_after=retry_after)
    if status == 404:
        return NotFound(message, code=code, sandbox_id=sandbox_id)
    if status in {401, 403}:
        return AccessDenied(message, code=code)
    if status == 429:
        return RateLimited(message, code=code, retry_after=retry_after)
    if status == 501:
        return Unsupported(message, sandbox_id=sandbox_id)
    if status in {402, 409}:
        # The state does not allow it: what the bus client meets as a rejection.
        rejected = {"type": "rejected", "code": code, "reason": message}
        return CommandFailed(message, rejected | ({"sandbox_id": sandbox_id} if sandbox_id else {}))
    if status in {400, 413, 422}:
        if code == "bad_request":
            return RequestError(message)
        refused = _INPUT_ERRORS.get(code, InvalidInput)(message, sandbox_id=sandbox_id)
        refused.code = code  # the gateway's own (invalid_request, malformed, ...)
        return refused
    if status == 502:
        return ExtensionError(message, sandbox_id=sandbox_id)
    if status == 503:
        return _UNAVAILABLE.get(code, BusError)(message, sandbox_id=sandbox_id)
    return BusError(f"the HTTP API failed ({status} {code}): {message}")
