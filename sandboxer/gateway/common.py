"""What the route modules share: the documented error answers, the ids in paths, and
the answers of a command (``202 Accepted`` with a status URL, or its outcome within
``?wait=``, or its rejection)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import Path, Query
from fastapi.responses import JSONResponse

from sandboxer import subjects
from sandboxer.client import SandboxerClient
from sandboxer.domain.key_access import event_owner, may_see, scope_of
from sandboxer.domain.rate_limit import stated_wait
from sandboxer.gateway.errors import error_response, rejection_response
from sandboxer.gateway.models import SANDBOX_ID, Accepted, ErrorBody, Pending

__all__ = [
    "ERRORS",
    "SSE_ERRORS",
    "CommandQuery",
    "SandboxId",
    "SnapshotId",
    "about",
    "accepted",
    "not_found",
    "rejection",
    "within",
]

T = TypeVar("T")

SandboxId = Annotated[
    str, Path(pattern=SANDBOX_ID, description="8-32 lowercase letters and digits")
]
SnapshotId = Annotated[
    str, Path(pattern=SANDBOX_ID, description="8-32 lowercase letters and digits")
]
CommandQuery = Annotated[
    str | None,
    Query(pattern=r"^[A-Za-z0-9_-]{1,128}$", description="the command whose outcome to report"),
]

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "malformed request (bad JSON, a bad header)",
        401: "no API key, or not a valid one (Authorization: Bearer <key>)",
        404: "no such sandbox, snapshot, profile or route (or one of another project)",
        409: "the sandbox's state does not allow it (the rejection's code and reason)",
        422: "a field, id or parameter is invalid (or the service rejected the command's content)",
        429: "the key's rate or live-sandbox limit is reached (see Retry-After)",
        503: "the service cannot be reached, or nothing can serve the request now",
    }.items()
}
SSE_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {
        "description": answer["description"],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }
    for code, answer in ERRORS.items()
}
"""An event stream's errors are JSON all the same (documented as such, not as events)."""


def _sandbox_url(sandbox_id: str, command_id: str) -> str:
    return f"/v1/sandboxes/{sandbox_id}?command_id={command_id}"


def _snapshot_url(snapshot_id: str, command_id: str) -> str:
    return f"/v1/snapshots/{snapshot_id}?command_id={command_id}"


def accepted(
    command_id: str, *, sandbox_id: str | None = None, snapshot_id: str | None = None
) -> JSONResponse:
    url = (
        _snapshot_url(snapshot_id, command_id)
        if snapshot_id
        else _sandbox_url(sandbox_id or "", command_id)
    )
    body = Accepted(
        command_id=command_id, sandbox_id=sandbox_id, snapshot_id=snapshot_id, status_url=url
    )
    return JSONResponse(
        body.model_dump(exclude_none=True), status_code=202, headers={"Location": url}
    )


async def within(seconds: float, outcome: Callable[[], Awaitable[T]]) -> T | None:
    """``outcome()`` if it comes within ``seconds``; None when the wait runs out (the
    command is accepted already and goes on: the status URL will show it) or is 0."""
    if seconds <= 0:
        return None
    try:
        async with asyncio.timeout(seconds):
            return await outcome()
    except TimeoutError:
        return None


def about(client: SandboxerClient, command_id: str, **fields: Any) -> dict[str, Any]:
    """A command of docs/protocol.md from this request's actor."""
    return {"command_id": command_id, "actor": client.actor, **fields}


async def rejection(client: SandboxerClient, command_id: str | None) -> JSONResponse | None:
    """The rejection of ``command_id`` in the error shape, if it was rejected."""
    if command_id is None:
        return None
    request: dict[str, Any] = {"command_id": command_id, "min_seq": client.seen_seq}
    scope = scope_of(client.actor)
    if scope is not None:  # the project's own: another's under this id must not hide it
        request["project"] = scope
    reply = await client.query(subjects.QUERY_REJECTION, request)
    event = reply.get("rejection")
    if not isinstance(event, dict) or not may_see(client.actor, event_owner(event)):
        return None
    code = str(event.get("code") or "rejected")
    reason = str(event.get("reason"))
    return rejection_response(code, reason, {"event": event}, stated_wait(event))


def not_found(kind: str, ident: str) -> JSONResponse:
    return error_response(404, f"unknown_{kind}", f"no {kind} {ident}")


def pending_or_not_found(kind: str, ident: str, command_id: str | None) -> JSONResponse:
    """What a GET answers for a sandbox or snapshot the view does not show: 202 while the
    status URL's command is still on its way (``command_id``), 404 otherwise."""
    if command_id is None:
        return not_found(kind, ident)
    pending = (
        Pending(command_id=command_id, sandbox_id=ident)
        if kind == "sandbox"
        else Pending(command_id=command_id, snapshot_id=ident)
    )
    return JSONResponse(pending.model_dump(exclude_none=True), 202, {"Retry-After": "1"})
