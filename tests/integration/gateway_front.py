"""The real service with the real gateway on uvicorn in front of it, as the gateway tests
use it: an administrator on the bus who makes keys, and an HTTP client per key."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from sandboxer.cli.key_commands import create_key
from sandboxer.client import SandboxerClient
from tests.integration.conftest import Service, reap_local, serve_gateway, start_service


@dataclass
class Front:
    """The service, its gateway's URL, and an administrator on the bus who makes keys."""

    service: Service
    url: str
    admin: SandboxerClient

    async def key(self, project: str, key_type: str = "agt", **limits: Any) -> str:
        """A new key of ``project`` (1,000 requests a second unless ``limits`` say)."""
        key, _ = await create_key(
            self.admin,
            project=project,
            key_type=key_type,  # type: ignore[arg-type]
            **({"rate_per_second": 1000} | limits),
        )
        return key

    def http(self, key: str | None = None) -> httpx.AsyncClient:
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        return httpx.AsyncClient(base_url=self.url, timeout=120, headers=headers)


@contextlib.asynccontextmanager
async def front_door(
    nats_url: str,
    home: Path,
    *,
    service: dict[str, Any] | None = None,
    gateway: dict[str, Any] | None = None,
) -> AsyncIterator[Front]:
    """A service on ``nats_url`` (``service``: its settings' overrides) and a gateway before it
    (``gateway``: the gateway's own overrides); on the way out both stop and ext.local's
    sandboxes are reaped."""
    running = await start_service(home, nats_url, **(service or {}))
    admin = SandboxerClient(running.client.nc, actor={"type": "adm", "id": "pytest-admin"})
    try:
        async with serve_gateway(running, home, **(gateway or {})) as url:
            yield Front(running, url, admin)
    finally:
        await running.client.close()
        await running.shutdown()
        await reap_local(home)
