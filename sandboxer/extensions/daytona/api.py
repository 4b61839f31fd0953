"""Our thin client of Daytona's REST API (v0.190.0 spec), on :class:`ProviderHttp`.

Each method is one operation of ``daytona-openapi.json``; the path, the fields
sent and the fields read are the spec's. Any 2xx is success (the real API
answers 201 where its spec says 200), and a 404 on a sandbox is "not there".
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from sandboxer.errors import ProviderError
from sandboxer.hosted.http import ProviderHttp

if TYPE_CHECKING:
    import httpx  # imported where used, as in ProviderHttp

__all__ = ["DaytonaApi", "ProviderSandbox"]

PAGE_LIMIT = 200
"""The spec's largest page."""
MAX_PAGES = 100


@dataclass(frozen=True)
class ProviderSandbox:
    """The fields of a Daytona ``Sandbox`` we act on."""

    id: str
    name: str
    state: str | None
    labels: dict[str, str]
    error_reason: str | None
    target: str | None
    desired_state: str | None = None
    """Where Daytona is taking it: a stop or start it took sets this at once, and the state
    follows when its runner has carried it out."""

    @classmethod
    def from_body(cls, body: Any) -> ProviderSandbox:
        """ValueError when ``body`` is not a Sandbox; a field of the wrong type is read as
        absent, so that nothing later compares or hashes a value it cannot (a list state)."""
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise ValueError("not a Sandbox")
        labels = body.get("labels") or {}
        return cls(
            id=body["id"],
            name=_text(body.get("name")) or body["id"],
            state=_text(body.get("state")),
            labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
            error_reason=_text(body.get("errorReason")),
            target=_text(body.get("target")),
            desired_state=_text(body.get("desiredState")),
        )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _segment(value: str) -> str:
    return quote(value, safe="")


class DaytonaApi:
    """The operations ext.daytona uses; ``api`` for the control plane, ``toolbox`` (a longer
    timeout) for commands."""

    def __init__(self, api: ProviderHttp, toolbox: ProviderHttp) -> None:
        self._api = api
        self._toolbox = toolbox

    @property
    def provider(self) -> str:
        return self._api.provider

    async def aclose(self) -> None:
        await self._api.aclose()
        await self._toolbox.aclose()

    async def create(self, body: Mapping[str, Any], sandbox_id: str) -> ProviderSandbox:
        """``POST /sandbox``, sent once: a lost answer is looked for by name, not re-sent."""
        response = await self._api.call(
            "POST", "/sandbox", json_body=dict(body), retry=False, sandbox_id=sandbox_id
        )
        return self._one(response, sandbox_id)

    async def get(self, id_or_name: str, sandbox_id: str) -> ProviderSandbox | None:
        """``GET /sandbox/{sandboxIdOrName}``; None when Daytona has no such sandbox."""
        response = await self._api.call(
            "GET", f"/sandbox/{_segment(id_or_name)}", accept=(404,), sandbox_id=sandbox_id
        )
        return None if response.status_code == 404 else self._one(response, sandbox_id)

    async def list(self, labels: Mapping[str, str]) -> list[ProviderSandbox]:
        """``GET /sandbox`` with the JSON-encoded label filter, every page, errored ones too."""
        import httpx

        found: list[ProviderSandbox] = []
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            params = {
                "labels": json.dumps(dict(labels), separators=(",", ":")),
                "includeErroredDeleted": "true",
                "limit": str(PAGE_LIMIT),
            }
            if cursor:
                params["cursor"] = cursor
            response = await self._api.call("GET", "/sandbox", params=httpx.QueryParams(params))
            body = self._api.read_json(response)
            items = body.get("items") if isinstance(body, dict) else None
            if not isinstance(items, list):
                raise self._api.unreadable(response)
            found.extend(self._sandbox(response, item, None) for item in items)
            cursor = body.get("nextCursor")
            if not isinstance(cursor, str | None):
                raise self._api.unreadable(response)
            if not cursor:
                return found
        raise ProviderError(
            f"{self.provider}: GET /sandbox gave more than {MAX_PAGES} pages of our sandboxes",
            provider=self.provider,
        )

    async def delete(self, id_or_name: str, sandbox_id: str) -> bool:
        """``DELETE /sandbox/{sandboxIdOrName}``; False when it was already gone (404)."""
        response = await self._api.call(
            "DELETE", f"/sandbox/{_segment(id_or_name)}", accept=(404,), sandbox_id=sandbox_id
        )
        return response.status_code != 404

    async def stop(self, id_or_name: str, sandbox_id: str) -> ProviderSandbox:
        return await self._post_sandbox(f"/sandbox/{_segment(id_or_name)}/stop", sandbox_id)

    async def start(self, id_or_name: str, sandbox_id: str) -> ProviderSandbox:
        return await self._post_sandbox(f"/sandbox/{_segment(id_or_name)}/start", sandbox_id)

    async def set_auto_stop(self, id_or_name: str, minutes: int, sandbox_id: str) -> None:
        await self._post_sandbox(f"/sandbox/{_segment(id_or_name)}/autostop/{minutes}", sandbox_id)

    async def set_auto_delete(self, id_or_name: str, minutes: int, sandbox_id: str) -> None:
        path = f"/sandbox/{_segment(id_or_name)}/autodelete/{minutes}"
        await self._post_sandbox(path, sandbox_id)

    async def execute(
        self,
        provider_id: str,
        command: str,
        *,
        cwd: str | None,
        timeout: float,
        sandbox_id: str,
        max_bytes: int,
    ) -> tuple[int, str]:
        """The toolbox's synchronous execute: (exit code, combined output). Sent once: a
        command is not safe to repeat. The answer carries whatever the sandbox printed, so
        at most ``max_bytes`` of it is read (a longer one is a ProviderError)."""
        body: dict[str, Any] = {"command": command, "timeout": timeout}
        if cwd:
            body["cwd"] = cwd
        path = f"/toolbox/{_segment(provider_id)}/toolbox/process/execute"
        response = await self._toolbox.call(
            "POST", path, json_body=body, retry=False, sandbox_id=sandbox_id, max_bytes=max_bytes
        )
        answer = self._toolbox.read_json(response, sandbox_id=sandbox_id)
        if (
            not isinstance(answer, dict)
            or not isinstance(answer.get("exitCode"), int | float)
            or not isinstance(answer.get("result"), str)
        ):
            raise self._toolbox.unreadable(response, sandbox_id=sandbox_id)
        return int(answer["exitCode"]), answer["result"]

    # -- answers ----------------------------------------------------------------------------

    async def _post_sandbox(self, path: str, sandbox_id: str) -> ProviderSandbox:
        response = await self._api.call("POST", path, sandbox_id=sandbox_id)
        return self._one(response, sandbox_id)

    def _one(self, response: httpx.Response, sandbox_id: str) -> ProviderSandbox:
        """The Sandbox an answer is."""
        return self._sandbox(
            response, self._api.read_json(response, sandbox_id=sandbox_id), sandbox_id
        )

    def _sandbox(
        self, response: httpx.Response, body: Any, sandbox_id: str | None
    ) -> ProviderSandbox:
        """``body`` (the answer, or an item of a list) as a Sandbox; ProviderError if it is not."""
        try:
            return ProviderSandbox.from_body(body)
        except ValueError:
            raise self._api.unreadable(response, sandbox_id=sandbox_id) from None
