"""Credits, usage and route explain (docs/http-api.md)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from sandboxer.domain.key_access import scope_of
from sandboxer.gateway.auth import require_project
from sandboxer.gateway.common import ERRORS
from sandboxer.gateway.context import BusClient, request_actor
from sandboxer.gateway.errors import error_response
from sandboxer.gateway.models import PROJECT, CreditsList
from sandboxer.gateway.paging import MAX_PAGE, AccountsAfter, Limit, UsageAfter, paged

__all__ = ["router"]

router = APIRouter(prefix="/v1", responses=ERRORS, dependencies=[Depends(request_actor)])
"""Each route needs an API key (docs/http-api.md#keys)."""

ProjectName = Annotated[str, Path(pattern=PROJECT)]


@router.get("/credits", response_model=CreditsList, tags=["credits"])
async def list_credits(
    client: BusClient,
    request: Request,
    response: Response,
    limit: Limit = MAX_PAGE,
    after: AccountsAfter = None,
) -> dict[str, Any]:
    """A page of the projects' accounts, by project: balance, reserved, available, budget
    (1 credit = 1 micro-USD); ``next`` as for GET /v1/sandboxes."""
    # A key of agt or atm asks for its own account alone (one page, whatever it asks), not
    # for a page of every project's to pick it out of.
    scope = scope_of(client.actor)
    found = await client.credits(scope, limit=limit, after=None if scope else after)
    return paged(request, response, {"accounts": found}, found.next)


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
    request: Request,
    response: Response,
    project: Annotated[str | None, Query(pattern=PROJECT)] = None,
    since: Annotated[str | None, Query(max_length=40, description="a date or a UTC time")] = None,
    until: Annotated[str | None, Query(max_length=40)] = None,
    limit: Limit = MAX_PAGE,
    after: UsageAfter = None,
    by: Annotated[
        Literal["harness", "session_id", "run_id", "job_id"] | None,
        Query(description="group the summary by this part of the sandboxes' consumer"),
    ] = None,
) -> dict[str, Any]:
    """A page of metered sandboxes (``usage``, ``next`` as for GET /v1/sandboxes) and spend
    over the whole period by project, profile and backend, or with ``by`` by a part of the
    sandboxes' consumer (a key of agt or atm: of its own project only)."""
    if project is not None:
        require_project(client, project, "usage")
    project = project or scope_of(client.actor)
    window = {"project": project, "since": since, "until": until, "by": by}
    reply = await client.usage(**window, limit=limit, after=after)
    body = {k: v for k, v in reply.items() if k not in {"ok", "position"}}
    return paged(request, response, body, reply.get("next"))


@router.get("/route/explain", tags=["routing"])
async def route_explain(
    client: BusClient,
    profile: Annotated[str, Query(min_length=1, max_length=200)],
    ttl: Annotated[str | None, Query(min_length=1, max_length=32)] = None,
) -> dict[str, Any]:
    """How a create of ``profile`` would be routed now, and why; nothing is created."""
    reply = await client.route_explain(profile, ttl)
    return {k: reply[k] for k in ("decision", "signals", "at") if k in reply}
