"""``GET /v1/health``: the one route that needs no API key (docs/http-api.md)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from sandboxer import __version__
from sandboxer.gateway.common import ERRORS
from sandboxer.gateway.context import ServiceClient
from sandboxer.gateway.models import Health

__all__ = ["router"]

router = APIRouter(prefix="/v1", responses=ERRORS)
"""No API key: health answers anyone."""


@router.get("/health", response_model=Health, tags=["service"])
async def health(client: ServiceClient) -> dict[str, Any]:
    """The gateway answers, and so does the service behind it (503 otherwise)."""
    service = await client.health()
    service.pop("ok", None)
    return {"gateway": {"version": __version__}, "service": service}
