"""The sandboxes and their lifecycle: create, list, get, destroy, recreate, extend-ttl,
pause and resume (docs/http-api.md)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from sandboxer.client import SandboxerClient
from sandboxer.domain.key_access import may_see, owner_of, scope_of
from sandboxer.errors import BusError, CommandFailed, RequestError
from sandboxer.gateway.auth import admit_create, own_failure, own_sandbox, require_sandbox
from sandboxer.gateway.common import (
    ERRORS,
    CommandQuery,
    SandboxId,
    about,
    accepted,
    pending_or_not_found,
    rejection,
    within,
)
from sandboxer.gateway.context import BusClient, CommandId, RequestKey, Wait, request_actor
from sandboxer.gateway.models import (
    CONSUMER_ID,
    HARNESS,
    PROJECT,
    Accepted,
    CreateSandbox,
    ExtendTtl,
    Pending,
    Sandbox,
    SandboxList,
)
from sandboxer.gateway.paging import MAX_PAGE, Limit, SandboxesAfter, paged

__all__ = ["router"]

router = APIRouter(prefix="/v1", responses=ERRORS, dependencies=[Depends(request_actor)])
"""Each route needs an API key (docs/http-api.md#keys)."""


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
            network=None if body.network is None else body.network.model_dump(exclude_none=True),
            consumer=None if body.consumer is None else body.consumer.model_dump(exclude_none=True),
            wait=waiting,
            timeout=wait + 60,
        )

    reply = await create(False)
    sandbox_id = str(reply["sandbox_id"])
    await own_sandbox(client, sandbox_id)  # 409 when the key names another project's create
    try:
        finished = await within(wait, lambda: create(True))
    except CommandFailed as failed:
        if not await own_failure(client, failed, sandbox_id):
            return accepted(command_id, sandbox_id=sandbox_id)
        raise
    if finished is not None:
        sandbox = await own_sandbox(client, sandbox_id)
        if sandbox is not None:
            return JSONResponse(
                sandbox, status_code=201, headers={"Location": f"/v1/sandboxes/{sandbox_id}"}
            )
    return accepted(command_id, sandbox_id=sandbox_id)


@router.get(
    "/sandboxes",
    response_model=SandboxList,
    tags=["sandboxes"],
)
async def list_sandboxes(
    client: BusClient,
    request: Request,
    response: Response,
    status: Annotated[str | None, Query(pattern=r"^[a-z_]{1,32}$")] = None,
    profile: Annotated[str | None, Query(max_length=200)] = None,
    extension: Annotated[str | None, Query(max_length=200)] = None,
    project: Annotated[str | None, Query(pattern=PROJECT)] = None,
    include_destroyed: bool = False,
    limit: Limit = MAX_PAGE,
    after: SandboxesAfter = None,
    harness: Annotated[str | None, Query(pattern=HARNESS)] = None,
    session_id: Annotated[str | None, Query(pattern=CONSUMER_ID)] = None,
    run_id: Annotated[str | None, Query(pattern=CONSUMER_ID)] = None,
    job_id: Annotated[str | None, Query(pattern=CONSUMER_ID)] = None,
    label: Annotated[
        list[str] | None,
        Query(max_length=16, description="KEY=VALUE of the consumer's labels, repeatable"),
    ] = None,
) -> dict[str, Any]:
    """A page of sandboxes, newest last; filters by status, profile, extension, project,
    and the consumer (harness, session_id, run_id, job_id, label). ``next`` (and the
    ``Link`` header) is the cursor of the page after, null on the last page.

    The service filters by status, consumer and project (a confined key's own, always);
    the gateway applies the other filters to what it returns, so ``limit`` bounds the
    sandboxes looked at, and a page may hold fewer than ``limit`` with more after it."""
    parts = {"harness": harness, "session_id": session_id, "run_id": run_id, "job_id": job_id}
    consumer: dict[str, Any] = {k: v for k, v in parts.items() if v is not None}
    if label:
        consumer["labels"] = dict(_label(item) for item in label)
    scope = scope_of(client.actor)
    if scope is not None and project not in (None, scope):
        return {"sandboxes": [], "next": None}  # another project's: none this key may see
    # The view narrows to the project, so the limit counts its sandboxes only.
    found = await client.list_sandboxes(
        status=status,
        include_destroyed=include_destroyed,
        limit=limit,
        consumer=consumer,
        project=scope or project,
        after=after,
    )
    chosen = [
        s
        for s in found
        if (profile is None or s.get("profile") == profile)
        and (extension is None or s.get("extension") == extension)
        and may_see(client.actor, owner_of(s))
    ]
    return paged(request, response, {"sandboxes": chosen}, found.next)


def _label(item: str) -> tuple[str, str]:
    """``KEY=VALUE`` as a pair; the service checks both (a bad one is a 400 saying why)."""
    key, sep, value = item.partition("=")
    if not sep:
        raise RequestError(f"label {item[:100]!r} must be KEY=VALUE")
    return key, value


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
    rejected = await rejection(client, command_id)
    if rejected is not None:
        return rejected
    sandbox = await client.get(sandbox_id)
    if sandbox is not None and may_see(client.actor, owner_of(sandbox)):
        return JSONResponse(sandbox)
    return pending_or_not_found("sandbox", sandbox_id, command_id)


async def _sandbox_or_accepted(
    client: BusClient, sandbox_id: str, command_id: str, finished: Any
) -> Response:
    if finished is not None:
        sandbox = await client.get(sandbox_id)
        if sandbox is not None:
            return JSONResponse(sandbox)
    return accepted(command_id, sandbox_id=sandbox_id)


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
    finished = await within(
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
    finished = await within(
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
    rejected = await rejection(client, command_id)
    if rejected is not None:
        return rejected
    try:
        return await client.extend_ttl(sandbox_id, body.duration, command_id=command_id)
    except BusError:
        rejected = await rejection(client, command_id)  # rejected while we watched
        if rejected is not None:
            return rejected
        raise


async def _pause_or_resume(
    verb: str, sandbox_id: str, client: SandboxerClient, command_id: str, wait: float
) -> Response:
    await require_sandbox(client, sandbox_id)
    await client.publish_command(verb, about(client, command_id, sandbox_id=sandbox_id))
    method = client.pause if verb == "pause" else client.resume
    finished = await within(
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
