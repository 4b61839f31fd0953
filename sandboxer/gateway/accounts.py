"""Credits, usage and route explain (docs/http-api.md)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Response
from fastapi.responses import JSONResponse

from sandboxer.domain.key_access import scope_of
from sandboxer.gateway.auth import require_project
from sandboxer.gateway.common import ERRORS
from sandboxer.gateway.context import BusClient, request_actor
from sandboxer.gateway.errors import error_response
from sandboxer.gateway.models import PROJECT, CreditsList

__all__ = ["router"]

router = APIRouter(prefix="/v1", responses=ERRORS, dependencies=[Depends(request_actor)])
"""Each route needs an API key (docs/http-api.md#keys)."""

ProjectName = Annotated[str, Path(pattern=PROJECT)]


@router.get("/credits", response_model=CreditsList, tags=["credits"])
async def list_credits(client: BusClient) -> dict[str, Any]:
    """Every project's account: balance, reserved, available, budget (1 credit = 1 micro-USD)."""
    # A key of agt or atm asks for its own account alone: picked out of every project's first
    # thousand (credits.list's limit), it would be missing once a thousand sort before it.
    return {"accounts": await client.credits(scope_of(client.actor))}


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
    by: Annotated[
        Literal["harness", "session_id", "run_id", "job_id"] | None,
        Query(description="group the summary by this part of the sandboxes' consumer"),
    ] = None,
) -> dict[str, Any]:
    """Metered sandboxes and spend by project, profile and backend, or with ``by`` by a part
    of the sandboxes' consumer (a key of agt or atm: of its own project only)."""
    if project is not None:
        require_project(client, project, "usage")
    project = project or scope_of(client.actor)
    reply = await client.usage(project=project, since=since, until=until, limit=limit, by=by)
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
