"""The one error shape of the HTTP API, and the HTTP status of every error.

Every error answer is ``{"error": {"code": "...", "message": "...", "details": {...}}}``
(``details`` optional). A command's rejection keeps its ``code`` and its ``reason``
verbatim as ``message``; the rejected event itself is in ``details.event``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sandboxer.domain.rate_limit import stated_wait
from sandboxer.errors import (
    BusError,
    CommandFailed,
    ConfigError,
    InvalidInput,
    ProviderError,
    ProviderQuota,
    RateLimited,
    Rejected,
    RequestError,
    SandboxerError,
    UnknownProfile,
    WorkerLost,
)

__all__ = [
    "REJECTION_STATUS",
    "RETRY_AFTER",
    "error_body",
    "error_response",
    "install_error_handlers",
    "rejection_response",
    "response_for",
    "retry_after",
    "status_for_rejection",
]

log = logging.getLogger(__name__)

REJECTION_STATUS: dict[str, int] = {
    # the command could not be read: the client's mistake in form or content
    "malformed": 400,
    "too_large": 413,
    "invalid_field": 422,
    "invalid_id": 422,
    "invalid_input": 422,
    "missing_input": 422,
    "unknown_command": 400,
    "unknown_profile": 422,
    "ttl_max_exceeded": 422,
    "invalid_network": 422,
    "network_widened": 422,  # like ttl_max_exceeded: it asks more than the profile allows
    "invalid_project": 422,
    "invalid_amount": 422,
    # it names nothing that exists
    "unknown_sandbox": 404,
    "unknown_snapshot": 404,
    "unknown_key": 404,
    # the state of the sandbox or snapshot does not allow it
    "sandbox_exists": 409,
    "already_destroyed": 409,
    "not_recreatable": 409,
    "not_rerouting": 409,
    "no_ttl": 409,
    "not_extendable": 409,
    "not_ready": 409,
    "not_due": 409,
    "not_snapshottable": 409,
    "snapshot_unsupported": 409,
    "pause_unsupported": 409,
    "not_pausable": 409,
    "already_paused": 409,
    "not_paused": 409,
    "snapshot_in_progress": 409,
    "snapshot_exists": 409,
    "not_restorable": 409,
    "already_deleted": 409,
    "key_exists": 409,
    "already_revoked": 409,
    # a key's live-sandbox limit (the gateway's own check answers the same: auth.admit_create)
    "live_limit": 429,
    # a key's rate on the bus (workers/key_rate.py), read back over HTTP (a status URL)
    "rate_limited": 429,
    # money and permission
    "insufficient_credits": 402,
    "budget_exceeded": 402,
    "forbidden": 403,
    # nothing can serve it right now
    "live_count_unavailable": 503,  # a key's limit could not be checked: not a full project
    "no_route": 503,
    "no_host": 503,
    "internal_error": 500,
}
"""HTTP status of each rejection code of docs/protocol.md#rejections (others: 409)."""

FAILURE_STATUS: dict[str, int] = {
    "provider_quota": 429,
    "provider_unavailable": 503,
    "no_route": 503,
    "invalid_input": 422,
    "input_outside_roots": 422,
    "workspace_refused": 422,
}
"""HTTP status of a ``failed`` sandbox by its ``code`` (others: 502, the backend failed)."""


RETRY_AFTER = "30"
"""``Retry-After`` of a 429 for a place that frees itself (a key's live limit, a provider's
quota) and of a failed sandbox's 503: a destroy or a quota's window takes about that long."""


def status_for_rejection(code: str) -> int:
    return REJECTION_STATUS.get(code, 409)


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return {"error": error}


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code=status, headers=headers)


def rejection_response(
    code: str, reason: str, details: dict[str, Any] | None = None, wait: float | None = None
) -> JSONResponse:
    """A rejected command's answer; a 429 (a key's limit) or a 503 (no route, no host, a live
    count not to be had) says when to try again: after ``wait``, what the rejection itself
    said (a key's rate on the bus), when it said it; else :data:`RETRY_AFTER`."""
    status = status_for_rejection(code)
    headers = None
    if status in {429, 503}:
        headers = {"Retry-After": RETRY_AFTER if wait is None else retry_after(wait)}
    return error_response(status, code, reason, details, headers)


def _command_failed(exc: CommandFailed) -> JSONResponse:
    event = exc.event
    kind = event.get("type")
    details = {"event": event} if kind else None
    if kind == "rejected":
        code = str(event.get("code") or "rejected")
        reason = str(event.get("reason") or exc.message)
        return rejection_response(code, reason, details, stated_wait(event))
    if kind == "failed":
        code = str(event.get("code") or "sandbox_failed")
        status = FAILURE_STATUS.get(code, 502)
        headers = {"Retry-After": RETRY_AFTER} if status in {429, 503} else None
        return error_response(status, code, str(event.get("reason")), details, headers)
    if kind == "pause_failed":
        return error_response(502, "pause_failed", str(event.get("reason")), details)
    if kind == "snapshot_finished":
        return error_response(502, "snapshot_failed", exc.message, details)
    if kind == "destroyed":
        return error_response(409, "sandbox_destroyed", exc.message, details)
    if kind in {"expired", "pause_limit_reached"}:
        return error_response(409, "sandbox_expired", exc.message, details)
    return error_response(409, "command_failed", exc.message, details)


def response_for(exc: SandboxerError) -> JSONResponse:
    """The answer to a sandboxer error raised while serving a request."""
    if isinstance(exc, CommandFailed):
        return _command_failed(exc)
    if isinstance(exc, UnknownProfile):
        return error_response(404, exc.code, exc.message)
    if isinstance(exc, InvalidInput):
        return error_response(422, exc.code, exc.message)
    if isinstance(exc, Rejected):
        return rejection_response(exc.code, exc.reason, wait=exc.retry_after)
    if isinstance(exc, RateLimited):  # a key's request past its rate on the bus
        wait = RETRY_AFTER if exc.retry_after is None else retry_after(exc.retry_after)
        return error_response(429, exc.code, exc.message, headers={"Retry-After": wait})
    if isinstance(exc, RequestError):
        # The service refused the query: the message is its reason after the subject.
        return error_response(400, exc.code, exc.message.partition(": ")[2] or exc.message)
    if isinstance(exc, WorkerLost):
        # No Retry-After: the command may still be running, and running it again is the
        # caller's decision, not something to do on a timer.
        return error_response(503, exc.code, exc.message)
    if isinstance(exc, BusError):
        return error_response(503, exc.code, exc.message, headers={"Retry-After": "5"})
    if isinstance(exc, ProviderQuota):
        return error_response(429, exc.code, exc.message, headers={"Retry-After": RETRY_AFTER})
    if isinstance(exc, ProviderError):
        return error_response(503, exc.code, exc.message, headers={"Retry-After": RETRY_AFTER})
    if isinstance(exc, ConfigError):
        return error_response(500, exc.code, exc.message)
    log.error("unmapped sandboxer error: %r", exc)
    return error_response(500, exc.code, exc.message)


_STATUS_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


def _validation_message(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()))
    return f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg"))


def _plain_errors(errors: Any) -> list[dict[str, Any]]:
    """Validation errors without the input they quote (it may be large, or not JSON)."""
    return [
        {
            "loc": [str(part) for part in e.get("loc", ())],
            "msg": str(e.get("msg")),
            "type": e.get("type"),
        }
        for e in list(errors)[:20]
    ]


async def _on_sandboxer_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SandboxerError)
    return response_for(exc)


async def _on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _plain_errors(exc.errors())
    if any(e["type"] == "json_invalid" for e in errors):
        return error_response(400, "malformed", "the body is not valid JSON", {"errors": errors})
    message = "; ".join(_validation_message(e) for e in errors[:3]) or "invalid request"
    return error_response(422, "invalid_request", message, {"errors": errors})


async def _on_http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc.detail, dict) and "code" in exc.detail:
        code, message = str(exc.detail["code"]), str(exc.detail.get("message"))
    else:
        code = _STATUS_CODES.get(exc.status_code, f"http_{exc.status_code}")
        message = str(exc.detail)
    return error_response(exc.status_code, code, message, headers=dict(exc.headers or {}))


async def _on_unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("request failed", exc_info=exc)
    return error_response(500, "internal_error", "the gateway failed on this request; see its log")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(SandboxerError, _on_sandboxer_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
