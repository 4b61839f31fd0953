"""Snapshots: take one of a sandbox, list, get, delete, and restore into a new sandbox
(docs/http-api.md)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from sandboxer.domain.key_access import scope_of
from sandboxer.errors import CommandFailed
from sandboxer.gateway.auth import (
    admit_create,
    own_failure,
    own_sandbox,
    own_snapshot,
    require_sandbox,
    require_snapshot,
    visible_snapshots,
)
from sandboxer.gateway.common import (
    ERRORS,
    CommandQuery,
    SandboxId,
    SnapshotId,
    about,
    accepted,
    pending_or_not_found,
    rejection,
    within,
)
from sandboxer.gateway.context import BusClient, CommandId, RequestKey, Wait, request_actor
from sandboxer.gateway.models import (
    SANDBOX_ID,
    Accepted,
    Pending,
    RestoreSnapshot,
    Sandbox,
    Snapshot,
    SnapshotList,
    TakeSnapshot,
)
from sandboxer.gateway.paging import MAX_PAGE, Limit, SnapshotsAfter, paged
from sandboxer.ids import derive_sandbox_id, derive_snapshot_id

__all__ = ["router"]

router = APIRouter(prefix="/v1", responses=ERRORS, dependencies=[Depends(request_actor)])
"""Each route needs an API key (docs/http-api.md#keys)."""


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
    await client.publish_command("snapshot", about(client, command_id, **fields))
    snapshot_id = derive_snapshot_id(command_id)
    snapshot = await within(
        wait,
        lambda: client.snapshot(sandbox_id, name=name, command_id=command_id, timeout=wait + 60),
    )
    if snapshot:
        await own_snapshot(client, snapshot)  # 409 when the key names another's snapshot
        return JSONResponse(snapshot, 201, {"Location": f"/v1/snapshots/{snapshot_id}"})
    return accepted(command_id, snapshot_id=snapshot_id)


@router.get("/snapshots", response_model=SnapshotList, tags=["snapshots"])
async def list_snapshots(
    client: BusClient,
    request: Request,
    response: Response,
    sandbox_id: Annotated[str | None, Query(pattern=SANDBOX_ID)] = None,
    include_deleted: bool = False,
    limit: Limit = MAX_PAGE,
    after: SnapshotsAfter = None,
) -> dict[str, Any]:
    """A page of snapshots, in the order they were requested (of one sandbox with
    ``sandbox_id``); ``next`` as for GET /v1/sandboxes."""
    # The view narrows a confined key's list to its project (each snapshot's owner, old
    # ones too), so the limit counts what it may see, not every project's first snapshots.
    found = await client.snapshots(
        sandbox_id=sandbox_id,
        include_deleted=include_deleted,
        limit=limit,
        project=scope_of(client.actor),
        after=after,
    )
    return paged(request, response, {"snapshots": found}, found.next)


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
    rejected = await rejection(client, command_id)
    if rejected is not None:
        return rejected
    snapshot = await client.snapshot_get(snapshot_id)
    if snapshot is not None and (await visible_snapshots(client, [snapshot])):
        return JSONResponse(snapshot)
    return pending_or_not_found("snapshot", snapshot_id, command_id)


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
    command = about(client, command_id, snapshot_id=snapshot_id)
    await client.publish_command("delete_snapshot", command)
    finished = await within(
        wait,
        lambda: client.delete_snapshot(snapshot_id, command_id=command_id, timeout=wait + 60),
    )
    if finished is not None:
        snapshot = await client.snapshot_get(snapshot_id)
        if snapshot is not None:
            return JSONResponse(snapshot)
    return accepted(command_id, snapshot_id=snapshot_id)


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
    consumer = None if body.consumer is None else body.consumer.model_dump(exclude_none=True)
    if consumer is not None:
        fields["consumer"] = consumer
    await client.publish_command("restore", about(client, command_id, **fields))
    sandbox_id = body.sandbox_id or derive_sandbox_id(command_id)
    try:
        finished = await within(
            wait,
            lambda: client.restore(
                snapshot_id,
                profile=body.profile,
                sandbox_id=body.sandbox_id,
                inputs=body.inputs,
                command_id=command_id,
                timeout=wait + 60,
                consumer=consumer,
            ),
        )
    except CommandFailed as failed:
        if not await own_failure(client, failed, sandbox_id):
            return accepted(command_id, sandbox_id=sandbox_id)
        raise
    if finished is not None:
        sandbox = await own_sandbox(client, sandbox_id)
        if sandbox is not None:
            return JSONResponse(sandbox, 201, {"Location": f"/v1/sandboxes/{sandbox_id}"})
    else:
        await own_sandbox(client, sandbox_id)
    return accepted(command_id, sandbox_id=sandbox_id)
