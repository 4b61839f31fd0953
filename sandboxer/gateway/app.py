"""The routes of the HTTP API under ``/v1/`` (docs/http-api.md).

Each route is a thin translation: validate what the request carries, call the bus
client the CLI uses, and answer with its result or the one error shape. Commands
answer ``202 Accepted`` with a status URL at once, or wait for their outcome with
``?wait=30s`` (answering 202 all the same when the wait runs out).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Path, Query, Response
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandboxer import __version__, subjects
from sandboxer.client import SandboxerClient
from sandboxer.domain.key_access import event_owner, may_see, owner_of, scope_of
from sandboxer.errors import BusError
from sandboxer.gateway import files
from sandboxer.gateway.auth import (
    admit_create,
    event_visibility,
    require_project,
    require_sandbox,
    require_snapshot,
    visible_snapshots,
)
from sandboxer.gateway.context import (
    BusClient,
    CommandId,
    Gateway,
    RequestKey,
    ServiceClient,
    Wait,
    gateway,
    request_actor,
)
from sandboxer.gateway.errors import (
    error_response,
    install_error_handlers,
    status_for_rejection,
)
from sandboxer.gateway.events import MAX_SEQUENCE, EventFilter, event_stream, start_after
from sandboxer.gateway.models import (
    PROJECT,
    SANDBOX_ID,
    Accepted,
    CreateSandbox,
    CreditsList,
    ErrorBody,
    ExtendTtl,
    Health,
    Pending,
    RestoreSnapshot,
    Sandbox,
    SandboxList,
    Snapshot,
    SnapshotList,
    TakeSnapshot,
)
from sandboxer.ids import derive_sandbox_id, derive_snapshot_id

__all__ = ["MAX_BODY_BYTES", "create_app"]

MAX_BODY_BYTES = 64 * 1024
"""The largest request body (a command on the bus is at most 64 KiB too)."""

MAX_HEADER_BYTES = 16 * 1024
"""The largest total of a request's header names and values."""

T = TypeVar("T")

SandboxId = Annotated[
    str, Path(pattern=SANDBOX_ID, description="8-32 lowercase letters and digits")
]
SnapshotId = Annotated[
    str, Path(pattern=SANDBOX_ID, description="8-32 lowercase letters and digits")
]
ProjectName = Annotated[str, Path(pattern=PROJECT)]


async def _visible_sandbox_id(sandbox_id: SandboxId, client: BusClient) -> str:
    """The path's sandbox, checked before a response starts (an event stream cannot answer
    404 once it has begun)."""
    await require_sandbox(client, sandbox_id)
    return sandbox_id


VisibleSandboxId = Annotated[str, Depends(_visible_sandbox_id)]
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


def _accepted(
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


async def _within(seconds: float, outcome: Callable[[], Awaitable[T]]) -> T | None:
    """``outcome()`` if it comes within ``seconds``; None when the wait runs out (the
    command is accepted already and goes on: the status URL will show it) or is 0."""
    if seconds <= 0:
        return None
    try:
        async with asyncio.timeout(seconds):
            return await outcome()
    except TimeoutError:
        return None


def _about(client: SandboxerClient, command_id: str, **fields: Any) -> dict[str, Any]:
    """A command of docs/protocol.md from this request's actor."""
    return {"command_id": command_id, "actor": client.actor, **fields}


async def _rejection(client: SandboxerClient, command_id: str | None) -> JSONResponse | None:
    """The rejection of ``command_id`` in the error shape, if it was rejected."""
    if command_id is None:
        return None
    reply = await client.query(
        subjects.QUERY_REJECTION, {"command_id": command_id, "min_seq": client.seen_seq}
    )
    event = reply.get("rejection")
    if not isinstance(event, dict) or not may_see(client.actor, event_owner(event)):
        return None
    code = str(event.get("code") or "rejected")
    return error_response(
        status_for_rejection(code), code, str(event.get("reason")), {"event": event}
    )


def _not_found(kind: str, ident: str) -> JSONResponse:
    return error_response(404, f"unknown_{kind}", f"no {kind} {ident}")


router = APIRouter(prefix="/v1", responses=ERRORS, dependencies=[Depends(request_actor)])
"""Every route but health: each needs an API key (docs/http-api.md#keys)."""
public = APIRouter(prefix="/v1", responses=ERRORS)

# -- sandboxes ---------------------------------------------------------------------------------


@router.post(
    "/sandboxes",
    status_code=202,
    response_model=Accepted,
    responses={
        201: {"model": Sandbox, "description": "ready (with ?wait=)"},
        402: ERRORS[409] | {"description": "insufficient credits or budget"},
    },
    tags=["sandboxes"],
)
async def create_sandbox(
    body: CreateSandbox, client: BusClient, key: RequestKey, command_id: CommandId, wait: Wait
) -> Response:
    """Create a sandbox from a profile: 202 with its id and status URL, or wait until ready."""
    await admit_create(client, key, body.project)

    async def create(waiting: bool) -> dict[str, Any]:
        return await client.create(
            body.profile,
            body.inputs,
            sandbox_id=body.sandbox_id,
            command_id=command_id,
            host=body.host,
            ttl=body.ttl,
            wait=waiting,
            timeout=wait + 60,
        )

    accepted = await create(False)
    sandbox_id = str(accepted["sandbox_id"])
    if await _within(wait, lambda: create(True)) is not None:
        sandbox = await client.get(sandbox_id)
        if sandbox is not None:
            return JSONResponse(
                sandbox, status_code=201, headers={"Location": f"/v1/sandboxes/{sandbox_id}"}
            )
    return _accepted(command_id, sandbox_id=sandbox_id)


@router.get(
    "/sandboxes",
    response_model=SandboxList,
    tags=["sandboxes"],
)
async def list_sandboxes(
    client: BusClient,
    status: Annotated[str | None, Query(pattern=r"^[a-z_]{1,32}$")] = None,
    profile: Annotated[str | None, Query(max_length=200)] = None,
    extension: Annotated[str | None, Query(max_length=200)] = None,
    project: Annotated[str | None, Query(pattern=PROJECT)] = None,
    include_destroyed: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> dict[str, Any]:
    """Sandboxes of the view, newest last; filters by status, profile, extension, project.

    The service filters by status; the gateway applies the other filters to what it
    returns, so ``limit`` bounds the sandboxes looked at."""
    found = await client.list_sandboxes(
        status=status, include_destroyed=include_destroyed, limit=limit
    )
    chosen = [
        s
        for s in found
        if (profile is None or s.get("profile") == profile)
        and (extension is None or s.get("extension") == extension)
        and (project is None or (s.get("actor") or {}).get("project") == project)
        and may_see(client.actor, owner_of(s))
    ]
    return {"sandboxes": chosen}


@router.get(
    "/sandboxes/{sandbox_id}",
    response_model=Sandbox,
    responses={
        202: {"model": Pending, "description": "the command is accepted, its work not yet visible"}
    },
    tags=["sandboxes"],
)
async def get_sandbox(
    sandbox_id: SandboxId, client: BusClient, command_id: CommandQuery = None
) -> Response:
    """One sandbox. With ``command_id`` (a status URL), a rejected command answers with its
    rejection, and a command whose work the view does not show yet with 202."""
    rejected = await _rejection(client, command_id)
    if rejected is not None:
        return rejected
    sandbox = await client.get(sandbox_id)
    if sandbox is not None and may_see(client.actor, owner_of(sandbox)):
        return JSONResponse(sandbox)
    if command_id is not None:
        pending = Pending(command_id=command_id, sandbox_id=sandbox_id)
        return JSONResponse(pending.model_dump(exclude_none=True), 202, {"Retry-After": "1"})
    return _not_found("sandbox", sandbox_id)


async def _sandbox_or_accepted(
    client: BusClient, sandbox_id: str, command_id: str, finished: Any
) -> Response:
    if finished is not None:
        sandbox = await client.get(sandbox_id)
        if sandbox is not None:
            return JSONResponse(sandbox)
    return _accepted(command_id, sandbox_id=sandbox_id)


@router.delete(
    "/sandboxes/{sandbox_id}",
    status_code=202,
    response_model=Accepted,
    responses={200: {"model": Sandbox, "description": "destroyed (with ?wait=)"}},
    tags=["sandboxes"],
)
async def destroy_sandbox(
    sandbox_id: SandboxId, client: BusClient, command_id: CommandId, wait: Wait
) -> Response:
    """Destroy a sandbox (tear it down; its history stays)."""
    await require_sandbox(client, sandbox_id)
    await client.destroy(sandbox_id, command_id=command_id, wait=False)
    finished = await _within(
        wait, lambda: client.destroy(sandbox_id, command_id=command_id, timeout=wait + 60)
    )
    return await _sandbox_or_accepted(client, sandbox_id, command_id, finished)


@router.post(
    "/sandboxes/{sandbox_id}/recreate",
    status_code=202,
    response_model=Accepted,
    responses={200: {"model": Sandbox, "description": "ready again (with ?wait=)"}},
    tags=["sandboxes"],
)
async def recreate_sandbox(
    sandbox_id: SandboxId, client: BusClient, command_id: CommandId, wait: Wait
) -> Response:
    """Tear the sandbox down and provision it again, same id (``generation`` + 1)."""
    await require_sandbox(client, sandbox_id)
    await client.recreate(sandbox_id, command_id=command_id, wait=False)
    finished = await _within(
        wait, lambda: client.recreate(sandbox_id, command_id=command_id, timeout=wait + 60)
    )
    return await _sandbox_or_accepted(client, sandbox_id, command_id, finished)


@router.post(
    "/sandboxes/{sandbox_id}/extend-ttl", response_model=dict[str, Any], tags=["sandboxes"]
)
async def extend_ttl(
    sandbox_id: SandboxId, body: ExtendTtl, client: BusClient, command_id: CommandId
) -> Any:
    """Push the expiry later; answers with the ``ttl_extended`` event (``expires_at``)."""
    await require_sandbox(client, sandbox_id)
    # An Idempotency-Key of a command rejected before: the bus drops the copy, and its
    # rejection is not among the sandbox's events, so answer it rather than wait in vain.
    rejected = await _rejection(client, command_id)
    if rejected is not None:
        return rejected
    try:
        return await client.extend_ttl(sandbox_id, body.duration, command_id=command_id)
    except BusError:
        rejected = await _rejection(client, command_id)  # rejected while we watched
        if rejected is not None:
            return rejected
        raise


async def _pause_or_resume(
    verb: str, sandbox_id: str, client: SandboxerClient, command_id: str, wait: float
) -> Response:
    await require_sandbox(client, sandbox_id)
    await client.publish_command(verb, _about(client, command_id, sandbox_id=sandbox_id))
    method = client.pause if verb == "pause" else client.resume
    finished = await _within(
        wait, lambda: method(sandbox_id, command_id=command_id, timeout=wait + 60)
    )
    return await _sandbox_or_accepted(client, sandbox_id, command_id, finished)


@router.post(
    "/sandboxes/{sandbox_id}/pause",
    status_code=202,
    response_model=Accepted,
    responses={200: {"model": Sandbox, "description": "paused (with ?wait=)"}},
    tags=["sandboxes"],
)
async def pause_sandbox(
    sandbox_id: SandboxId, client: BusClient, command_id: CommandId, wait: Wait
) -> Response:
    """Freeze every process of the sandbox; its TTL clock stops."""
    return await _pause_or_resume("pause", sandbox_id, client, command_id, wait)


@router.post(
    "/sandboxes/{sandbox_id}/resume",
    status_code=202,
    response_model=Accepted,
    responses={200: {"model": Sandbox, "description": "running again (with ?wait=)"}},
    tags=["sandboxes"],
)
async def resume_sandbox(
    sandbox_id: SandboxId, client: BusClient, command_id: CommandId, wait: Wait
) -> Response:
    """Thaw a paused sandbox."""
    return await _pause_or_resume("resume", sandbox_id, client, command_id, wait)


# -- snapshots ---------------------------------------------------------------------------------


@router.post(
    "/sandboxes/{sandbox_id}/snapshot",
    status_code=202,
    response_model=Accepted,
    responses={201: {"model": Snapshot, "description": "created (with ?wait=)"}},
    tags=["snapshots"],
)
async def take_snapshot(
    sandbox_id: SandboxId,
    client: BusClient,
    command_id: CommandId,
    wait: Wait,
    body: TakeSnapshot | None = None,
) -> Response:
    """Store a copy of the sandbox's workspace; its snapshot id is derived from the command id."""
    await require_sandbox(client, sandbox_id)
    name = body.name if body is not None else None
    fields = {"sandbox_id": sandbox_id, **({} if name is None else {"name": name})}
    await client.publish_command("snapshot", _about(client, command_id, **fields))
    snapshot_id = derive_snapshot_id(command_id)
    snapshot = await _within(
        wait,
        lambda: client.snapshot(sandbox_id, name=name, command_id=command_id, timeout=wait + 60),
    )
    if snapshot:
        return JSONResponse(snapshot, 201, {"Location": f"/v1/snapshots/{snapshot_id}"})
    return _accepted(command_id, snapshot_id=snapshot_id)


@router.get("/snapshots", response_model=SnapshotList, tags=["snapshots"])
async def list_snapshots(
    client: BusClient,
    sandbox_id: Annotated[str | None, Query(pattern=SANDBOX_ID)] = None,
    include_deleted: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> dict[str, Any]:
    """Snapshots, in the order they were requested (of one sandbox with ``sandbox_id``)."""
    found = await client.snapshots(
        sandbox_id=sandbox_id, include_deleted=include_deleted, limit=limit
    )
    return {"snapshots": await visible_snapshots(client, found)}


@router.get(
    "/snapshots/{snapshot_id}",
    response_model=Snapshot,
    responses={
        202: {"model": Pending, "description": "the command is accepted, its work not yet visible"}
    },
    tags=["snapshots"],
)
async def get_snapshot(
    snapshot_id: SnapshotId, client: BusClient, command_id: CommandQuery = None
) -> Response:
    """One snapshot (with ``command_id``: as a status URL, see GET /v1/sandboxes/{id})."""
    rejected = await _rejection(client, command_id)
    if rejected is not None:
        return rejected
    snapshot = await client.snapshot_get(snapshot_id)
    if snapshot is not None and (await visible_snapshots(client, [snapshot])):
        return JSONResponse(snapshot)
    if command_id is not None:
        pending = Pending(command_id=command_id, snapshot_id=snapshot_id)
        return JSONResponse(pending.model_dump(exclude_none=True), 202, {"Retry-After": "1"})
    return _not_found("snapshot", snapshot_id)


@router.delete(
    "/snapshots/{snapshot_id}",
    status_code=202,
    response_model=Accepted,
    responses={200: {"model": Snapshot, "description": "deleted (with ?wait=)"}},
    tags=["snapshots"],
)
async def delete_snapshot(
    snapshot_id: SnapshotId, client: BusClient, command_id: CommandId, wait: Wait
) -> Response:
    """Delete the snapshot's data (its history stays in the log)."""
    await require_snapshot(client, snapshot_id)
    command = _about(client, command_id, snapshot_id=snapshot_id)
    await client.publish_command("delete_snapshot", command)
    finished = await _within(
        wait,
        lambda: client.delete_snapshot(snapshot_id, command_id=command_id, timeout=wait + 60),
    )
    if finished:
        snapshot = await client.snapshot_get(snapshot_id)
        if snapshot is not None:
            return JSONResponse(snapshot)
    return _accepted(command_id, snapshot_id=snapshot_id)


@router.post(
    "/snapshots/{snapshot_id}/restore",
    status_code=202,
    response_model=Accepted,
    responses={201: {"model": Sandbox, "description": "the new sandbox is ready (with ?wait=)"}},
    tags=["snapshots"],
)
async def restore_snapshot(
    snapshot_id: SnapshotId,
    client: BusClient,
    key: RequestKey,
    command_id: CommandId,
    wait: Wait,
    body: RestoreSnapshot | None = None,
) -> Response:
    """Create a new sandbox from the snapshot, on its profile or another (any backend)."""
    body = body or RestoreSnapshot()
    await require_snapshot(client, snapshot_id)
    await admit_create(client, key, body.project)
    fields: dict[str, Any] = {"snapshot_id": snapshot_id}
    if body.profile is not None:
        fields["profile"] = body.profile
    if body.sandbox_id is not None:
        fields["sandbox_id"] = body.sandbox_id
    if body.inputs:
        fields["inputs"] = body.inputs
    await client.publish_command("restore", _about(client, command_id, **fields))
    sandbox_id = body.sandbox_id or derive_sandbox_id(command_id)
    finished = await _within(
        wait,
        lambda: client.restore(
            snapshot_id,
            profile=body.profile,
            sandbox_id=body.sandbox_id,
            inputs=body.inputs,
            command_id=command_id,
            timeout=wait + 60,
        ),
    )
    if finished:
        sandbox = await client.get(sandbox_id)
        if sandbox is not None:
            return JSONResponse(sandbox, 201, {"Location": f"/v1/sandboxes/{sandbox_id}"})
    return _accepted(command_id, sandbox_id=sandbox_id)


# -- credits, usage, routing -------------------------------------------------------------------


@router.get("/credits", response_model=CreditsList, tags=["credits"])
async def list_credits(client: BusClient) -> dict[str, Any]:
    """Every project's account: balance, reserved, available, budget (1 credit = 1 micro-USD)."""
    accounts = await client.credits()
    return {"accounts": [a for a in accounts if may_see(client.actor, a.get("project"))]}


@router.get("/credits/{project}", tags=["credits"])
async def get_credits(project: ProjectName, client: BusClient) -> Response:
    """One project's account."""
    require_project(client, project)
    accounts = await client.credits(project)
    if not accounts:
        return error_response(404, "unknown_account", f"project {project} has no account yet")
    return JSONResponse(accounts[0])


@router.get("/usage", tags=["credits"])
async def usage(
    client: BusClient,
    project: Annotated[str | None, Query(pattern=PROJECT)] = None,
    since: Annotated[str | None, Query(max_length=40, description="a date or a UTC time")] = None,
    until: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> dict[str, Any]:
    """Metered sandboxes and spend by project, profile and backend (a key of agt or atm: of
    its own project only)."""
    if project is not None:
        require_project(client, project, "usage")
    project = project or scope_of(client.actor)
    reply = await client.usage(project=project, since=since, until=until, limit=limit)
    return {k: v for k, v in reply.items() if k not in {"ok", "position"}}


@router.get("/route/explain", tags=["routing"])
async def route_explain(
    client: BusClient,
    profile: Annotated[str, Query(min_length=1, max_length=200)],
    ttl: Annotated[str | None, Query(min_length=1, max_length=32)] = None,
) -> dict[str, Any]:
    """How a create of ``profile`` would be routed now, and why; nothing is created."""
    reply = await client.route_explain(profile, ttl)
    return {k: reply[k] for k in ("decision", "signals", "at") if k in reply}


# -- catalog and health ------------------------------------------------------------------------


GatewayState = Annotated[Gateway, Depends(gateway)]


@router.get("/profiles", tags=["catalog"])
async def list_profiles(gw: GatewayState) -> list[dict[str, Any]]:
    """The profiles this gateway's catalog holds (packaged and $SANDBOXER_HOME's)."""
    return [p.model_dump(mode="json") for p in gw.catalog.profiles.values()]


@router.get("/profiles/{profile_id}", tags=["catalog"])
async def get_profile(
    profile_id: Annotated[str, Path(max_length=200)], gw: GatewayState
) -> Response:
    """One profile in full."""
    found = gw.catalog.profiles.get(profile_id)
    if found is None:
        return _not_found("profile", profile_id)
    return JSONResponse(found.model_dump(mode="json"))


@router.get("/extensions", tags=["catalog"])
async def list_extensions(gw: GatewayState) -> list[dict[str, Any]]:
    """The extension declarations (backends) and what they offer."""
    return [d.model_dump(mode="json") for d in gw.catalog.extensions.values()]


@router.get("/extensions/{extension_id}", tags=["catalog"])
async def get_extension(
    extension_id: Annotated[str, Path(max_length=200)], gw: GatewayState
) -> Response:
    """One extension declaration."""
    found = gw.catalog.extensions.get(extension_id)
    if found is None:
        return _not_found("extension", extension_id)
    return JSONResponse(found.model_dump(mode="json"))


@public.get("/health", response_model=Health, tags=["service"])
async def health(client: ServiceClient) -> dict[str, Any]:
    """The gateway answers, and so does the service behind it (503 otherwise)."""
    service = await client.health()
    service.pop("ok", None)
    return {"gateway": {"version": __version__}, "service": service}


# -- events ------------------------------------------------------------------------------------

LastEventId = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        pattern=r"^\d{1,19}$",
        description="the last id received: the stream goes on after it",
    ),
]
After = Annotated[
    int | None,
    Query(ge=0, le=MAX_SEQUENCE, description="as Last-Event-ID: start after this sequence"),
]
Types = Annotated[
    list[str] | None,
    Query(alias="type", max_length=50, description="only these event types (repeat or comma list)"),
]
Follow = Annotated[bool, Query(description="false: send what the log holds, then end")]


def _types(raw: list[str] | None) -> set[str]:
    names = {part.strip() for item in raw or () for part in item.split(",") if part.strip()}
    return {name[:64] for name in names}


@router.get("/events", response_class=EventSourceResponse, responses=SSE_ERRORS, tags=["events"])
async def events(
    client: BusClient,
    last_event_id: LastEventId = None,
    after: After = None,
    sandbox_id: Annotated[str | None, Query(alias="sandbox", pattern=SANDBOX_ID)] = None,
    project: Annotated[str | None, Query(pattern=PROJECT)] = None,
    types: Types = None,
    follow: Follow = True,
) -> AsyncIterator[ServerSentEvent]:
    """Every event of the log as Server-Sent Events (``id:`` is the stream sequence),
    filtered by sandbox, project and type; resumes after ``Last-Event-ID`` or ``?after=``."""
    chosen = EventFilter(sandbox_id=sandbox_id, project=project, types=_types(types))
    start = start_after(last_event_id, after)
    visible = event_visibility(client)
    async for item in event_stream(client, chosen, start_seq=start, follow=follow, visible=visible):
        yield item


@router.get(
    "/sandboxes/{sandbox_id}/events",
    response_class=EventSourceResponse,
    responses=SSE_ERRORS,
    tags=["events"],
)
async def sandbox_events(
    sandbox_id: VisibleSandboxId,
    client: BusClient,
    last_event_id: LastEventId = None,
    after: After = None,
    types: Types = None,
    follow: Follow = True,
) -> AsyncIterator[ServerSentEvent]:
    """One sandbox's events as Server-Sent Events; resumes as /v1/events does."""
    chosen = EventFilter(sandbox_id=sandbox_id, types=_types(types))
    start = start_after(last_event_id, after)
    visible = event_visibility(client)
    async for item in event_stream(client, chosen, start_seq=start, follow=follow, visible=visible):
        yield item


# -- the app -----------------------------------------------------------------------------------


def create_app(gw: Gateway) -> FastAPI:
    """The ASGI app of one gateway process (``gw`` holds its bus connection and catalog)."""
    app = FastAPI(
        title="sandboxer",
        version=__version__,
        summary="Establish isolated sandboxes on many backends (docs/http-api.md).",
        openapi_url="/openapi.json",
        docs_url=None,
        redirect_slashes=False,
        redoc_url=None,
    )
    app.state.gateway = gw
    install_error_handlers(app)
    app.include_router(public)
    app.include_router(router)
    app.include_router(files.router)  # exec and files (gateway/files.py)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        return _as_openapi_31(generate())

    app.openapi = openapi  # type: ignore[method-assign]
    return app


SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "description": "One Server-Sent Event (before OpenAPI 3.2, an event stream's schema "
    "describes each event): `id` is the stream sequence, `event` the event type and `data` "
    "the event as JSON",
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "event": {"type": "string"},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "retry": {"type": "integer", "minimum": 0},
    },
    "required": ["data"],
}


def _as_openapi_31(document: dict[str, Any]) -> dict[str, Any]:
    """FastAPI describes an event stream's items with OpenAPI 3.2's ``itemSchema`` in a
    document that says 3.1, which 3.1 validators refuse: say it in 3.1's words instead
    (there a stream's ``schema`` is each event's, as schema-driven tools read it)."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            for answer in operation.get("responses", {}).values():
                stream = answer.get("content", {}).get("text/event-stream")
                if isinstance(stream, dict) and "itemSchema" in stream:
                    del stream["itemSchema"]
                    stream["schema"] = SSE_EVENT
    return document


class BodyLimit:
    """Refuse a request body over ``limit`` bytes with 413 in the error shape: at once when
    its Content-Length says so, else as soon as the bytes read pass it; and headers over
    MAX_HEADER_BYTES with 431."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if sum(len(k) + len(v) for k, v in scope["headers"]) > MAX_HEADER_BYTES:
            message = f"the request's headers are larger than {MAX_HEADER_BYTES} bytes"
            await error_response(431, "headers_too_large", message)(scope, receive, send)
            return
        limit = files.body_limit(scope, self.limit)  # uploads and execs may be larger
        length = Headers(scope=scope).get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            status, code = (413, "too_large") if length.isdigit() else (400, "bad_request")
            message = (
                f"the body is larger than {limit} bytes"
                if length.isdigit()
                else "Content-Length is not a number"
            )
            await error_response(status, code, message)(scope, receive, send)
            return
        total = 0

        async def limited() -> Message:
            nonlocal total
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > limit:
                    raise HTTPException(
                        413,
                        {
                            "code": "too_large",
                            "message": f"the body is larger than {limit} bytes",
                        },
                    )
            return message

        await self.app(scope, limited, send)
