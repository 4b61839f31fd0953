"""The catalog this gateway holds: profiles and extension declarations (docs/http-api.md)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Response
from fastapi.responses import JSONResponse

from sandboxer.gateway.common import ERRORS, not_found
from sandboxer.gateway.context import Gateway, gateway, request_actor

__all__ = ["router"]

router = APIRouter(prefix="/v1", responses=ERRORS, dependencies=[Depends(request_actor)])
"""Each route needs an API key (docs/http-api.md#keys)."""


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
        return not_found("profile", profile_id)
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
        return not_found("extension", extension_id)
    return JSONResponse(found.model_dump(mode="json"))
