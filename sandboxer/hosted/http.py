"""The one boundary through which hosted backends speak HTTP to their provider (httpx).

It maps what the provider answers to our errors, keeping the provider's own
message: 429 is :class:`ProviderQuota` (retryable; routing avoids the
provider for a while), 401/403 is :class:`ProviderAuth` naming the key's
reference, other 4xx is :class:`ProviderError`, and 5xx, timeouts and broken
connections are retried with backoff by ``stamina`` before they become
:class:`ProviderUnavailable`. A request that is not safe to repeat (a create)
is sent once with ``retry=False``: its caller looks for what it may have made
before trying again (:mod:`sandboxer.hosted.create_once`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

import stamina

from sandboxer.errors import ProviderAuth, ProviderError, ProviderQuota, ProviderUnavailable
from sandboxer.secrets import redact

if TYPE_CHECKING:
    # httpx is imported when a backend first reaches its provider (it has a key): `sandboxer
    # up` runs the hosted backends whether or not they have one.
    import httpx

__all__ = ["ProviderHttp", "provider_message"]

MAX_MESSAGE_CHARS = 500


def provider_message(response: httpx.Response) -> str:
    """The provider's own words: ``message`` (and ``error``) of a JSON error body, else its text."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text[:MAX_MESSAGE_CHARS] or response.reason_phrase
    if isinstance(body, dict):
        parts = [str(body[k]) for k in ("error", "message") if body.get(k)]
        if parts:
            return ": ".join(dict.fromkeys(parts))[:MAX_MESSAGE_CHARS]
    return response.text[:MAX_MESSAGE_CHARS]


class ProviderHttp:
    """Requests to one provider's API, with its auth header, mapped errors and retries."""

    def __init__(
        self,
        *,
        provider: str,
        base_url: str,
        auth_headers: Mapping[str, str],
        key_source: str,
        timeout: float = 30.0,
        retry_budget: float = 30.0,
        attempts: int = 4,
        wait_initial: float = 0.2,
    ) -> None:
        self.provider = provider
        self._key_source = key_source
        self._secrets = [v.removeprefix("Bearer ") for v in auth_headers.values()]
        self._budget = retry_budget
        self._attempts = attempts
        self._wait_initial = wait_initial
        import httpx

        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=dict(auth_headers), timeout=timeout
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: httpx.QueryParams | None = None,
        retry: bool = True,
        accept: Collection[int] = (),
        sandbox_id: str | None = None,
    ) -> httpx.Response:
        """The 2xx answer (or one whose status is in ``accept``, such as a 404 on delete)."""
        import httpx

        is_transient: Callable[[Exception], bool] = lambda exc: isinstance(  # noqa: E731
            exc, ProviderUnavailable | httpx.TransportError
        )
        try:
            async for attempt in stamina.retry_context(
                on=is_transient,
                attempts=self._attempts if retry else 1,
                timeout=self._budget,
                wait_initial=self._wait_initial,
                wait_max=5.0,
            ):
                with attempt:
                    response = await self._client.request(
                        method, path, json=json_body, params=params
                    )
                    if response.status_code >= 500 and response.status_code not in accept:
                        raise self._error(
                            ProviderUnavailable,
                            f"{method} {path} answered {response.status_code}: "
                            f"{provider_message(response)}",
                            response.status_code,
                            sandbox_id,
                        )
        except httpx.TransportError as exc:
            what = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
            raise self._error(
                ProviderUnavailable,
                f"{method} {path} {what}{' after retries' if retry else ''}: "
                f"{type(exc).__name__} {exc}".rstrip(),
                None,
                sandbox_id,
            ) from None
        status = response.status_code
        if 200 <= status < 300 or status in accept:
            return response
        message = provider_message(response)
        if status == 429:
            raise self._error(
                ProviderQuota,
                f"{method} {path} was refused for quota or rate (429): {message}",
                status,
                sandbox_id,
            )
        if status in {401, 403}:
            raise self._error(
                ProviderAuth,
                f"{method} {path} was refused ({status}): {message}. Check the API key "
                f"from {self._key_source}",
                status,
                sandbox_id,
            )
        raise self._error(
            ProviderError, f"{method} {path} failed ({status}): {message}", status, sandbox_id
        )

    def _error(
        self,
        kind: type[ProviderError],
        message: str,
        status: int | None,
        sandbox_id: str | None,
    ) -> ProviderError:
        text = redact(f"{self.provider}: {message}", self._secrets)
        return kind(text, provider=self.provider, status=status, sandbox_id=sandbox_id)
