"""The E2B operations ext.e2b uses, as the spec names them, over ProviderHttp.

Each method is one request (the list follows ``X-Next-Token`` across pages).
Error mapping, retries and key redaction are ProviderHttp's; a create is sent
once (``retry=False``) because its caller looks for what it may have made
before sending another. A 404 becomes ``None`` or ``False`` where the caller
has something to decide, never an exception to catch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlencode

from sandboxer.errors import ProviderError
from sandboxer.extensions.e2b.config import E2bEndpoint, E2bSettings
from sandboxer.extensions.e2b.wire import (
    Created,
    Listed,
    read_created,
    read_listed,
    read_tokens,
)
from sandboxer.hosted.http import ProviderHttp

if TYPE_CHECKING:
    import httpx  # imported where used, as in ProviderHttp

__all__ = ["E2bApi"]

T = TypeVar("T")

LIVE_STATES = "running,paused"
MAX_PAGES = 1000
"""A guard against a cursor that never ends (100 sandboxes a page: 100,000 sandboxes)."""


class E2bApi:
    def __init__(self, endpoint: E2bEndpoint, settings: E2bSettings, *, provider: str) -> None:
        self.endpoint = endpoint
        self._http = ProviderHttp(
            provider=provider,
            base_url=endpoint.base_url,
            auth_headers={"X-API-Key": endpoint.key.value},
            key_source=endpoint.key.source,
            timeout=settings.request_timeout,
            retry_budget=settings.retry_budget,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def create(
        self, body: Mapping[str, Any], *, sandbox_id: str
    ) -> tuple[Created, dict[str, str]]:
        """The sandbox made, and the tokens E2B issued for it (for the token store only)."""
        response = await self._http.call(
            "POST", "/sandboxes", json_body=dict(body), retry=False, sandbox_id=sandbox_id
        )
        answer = self._http.read_json(response, sandbox_id=sandbox_id)
        return self._read(read_created, response, answer, sandbox_id), read_tokens(answer)

    async def get(self, provider_id: str, *, sandbox_id: str | None = None) -> Listed | None:
        response = await self._http.call(
            "GET", f"/sandboxes/{provider_id}", accept={404}, sandbox_id=sandbox_id
        )
        if response.status_code == 404:
            return None
        answer = self._http.read_json(response, sandbox_id=sandbox_id)
        return self._read(read_listed, response, answer, sandbox_id)

    async def tokens(self, provider_id: str, *, sandbox_id: str) -> dict[str, str] | None:
        """The sandbox's current tokens (its envd access token), None when it is gone."""
        response = await self._http.call(
            "GET", f"/sandboxes/{provider_id}", accept={404}, sandbox_id=sandbox_id
        )
        if response.status_code == 404:
            return None
        return read_tokens(self._http.read_json(response, sandbox_id=sandbox_id))

    async def kill(self, provider_id: str, *, sandbox_id: str | None = None) -> bool:
        """True when it was killed now, False when it was already gone."""
        response = await self._http.call(
            "DELETE", f"/sandboxes/{provider_id}", accept={404}, sandbox_id=sandbox_id
        )
        return response.status_code != 404

    async def set_timeout(self, provider_id: str, seconds: int, *, sandbox_id: str) -> bool:
        """False when the sandbox is gone."""
        response = await self._http.call(
            "POST",
            f"/sandboxes/{provider_id}/timeout",
            json_body={"timeout": seconds},
            accept={404},
            sandbox_id=sandbox_id,
        )
        return response.status_code != 404

    async def pause(self, provider_id: str, *, sandbox_id: str) -> int:
        """204 paused now, 409 not running (already paused), 404 gone."""
        response = await self._http.call(
            "POST", f"/sandboxes/{provider_id}/pause", accept={404, 409}, sandbox_id=sandbox_id
        )
        return response.status_code

    async def resume(
        self, provider_id: str, seconds: int, *, sandbox_id: str
    ) -> tuple[int, dict[str, str]]:
        """201 resumed now (with the tokens E2B issued), 409 not paused, 404 gone."""
        response = await self._http.call(
            "POST",
            f"/sandboxes/{provider_id}/resume",
            json_body={"timeout": seconds},
            accept={404, 409},
            sandbox_id=sandbox_id,
        )
        if response.status_code == 201:
            return 201, read_tokens(self._http.read_json(response, sandbox_id=sandbox_id))
        return response.status_code, {}

    async def list_live(self, metadata: Mapping[str, str] | None = None) -> list[Listed]:
        """Every running or paused sandbox of the team, or those whose metadata match."""
        import httpx

        found: list[Listed] = []
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            params: dict[str, str] = {"state": LIVE_STATES, "limit": "100"}
            if metadata:
                params["metadata"] = urlencode(dict(metadata))
            if cursor:
                params["nextToken"] = cursor
            response = await self._http.call(
                "GET", "/v2/sandboxes", params=httpx.QueryParams(params)
            )
            page = self._http.read_json(response)
            if not isinstance(page, list):
                raise self._http.unreadable(response)
            found.extend(self._read(read_listed, response, item, None) for item in page)
            cursor = response.headers.get("x-next-token") or None
            if cursor is None:
                return found
        raise ProviderError(
            f"{self._http.provider}: GET /v2/sandboxes kept answering a next page after "
            f"{MAX_PAGES} pages; stopped",
            provider=self._http.provider,
        )

    def _read(
        self,
        reader: Callable[[Any], T],
        response: httpx.Response,
        body: Any,
        sandbox_id: str | None,
    ) -> T:
        """``reader(body)``; what is not the spec's is a ProviderError naming the request."""
        try:
            return reader(body)
        except ValueError:
            raise self._http.unreadable(response, sandbox_id=sandbox_id) from None
