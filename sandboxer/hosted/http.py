"""The one boundary through which hosted backends speak HTTP to their provider (httpx).

It maps what the provider answers to our errors, keeping the provider's own
message: 429 is :class:`ProviderQuota` (retryable; routing avoids the
provider for a while), 401/403 is :class:`ProviderAuth` naming the key's
reference, other 4xx is :class:`ProviderError`, and 5xx, timeouts and broken
connections are retried with backoff by ``stamina`` before they become
:class:`ProviderUnavailable`. A request that is not safe to repeat (a create)
is sent once with ``retry=False``: its caller looks for what it may have made
before trying again (:mod:`sandboxer.hosted.create_once`).

Every answer is asked for and read uncompressed (a compressed one is refused unread: it may
expand without bound, :mod:`sandboxer.http_body`), as it arrives, and the read stopped past
``max_bytes``
(:func:`sandboxer.http_body.read_at_most`, shared with the event deliveries): by
default :data:`MAX_ANSWER_BYTES`, ample for the largest answer the providers'
specs describe, so a wrong ``api_url`` (or a misbehaving endpoint) serving a
huge or endless body never fills a worker's memory; an answer that carries what
a sandbox printed (Daytona's toolbox) is read with a ``max_bytes`` of its own,
so a tenant's output is never held whole. An attempt has one deadline for all
of it (``timeout``: connecting, sending, the status and the whole body), not
httpx's per read, which a server dripping a byte at a time never reaches.

A 2xx answer that is not the JSON the spec describes (a wrong ``api_url``
answering a web page, a broken item) is a :class:`ProviderError` too
(:meth:`ProviderHttp.read_json`, :meth:`ProviderHttp.unreadable`), never a
decoding exception that would escape the callers that catch our errors (the
worker's reconcile at start).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

import stamina

from sandboxer.errors import ProviderAuth, ProviderError, ProviderQuota, ProviderUnavailable
from sandboxer.http_body import IDENTITY, content_coding, public_url, read_at_most
from sandboxer.secrets import redact

if TYPE_CHECKING:
    # httpx is imported when a backend first reaches its provider (it has a key): `sandboxer
    # up` runs the hosted backends whether or not they have one.
    import httpx

__all__ = ["MAX_ANSWER_BYTES", "ProviderHttp", "provider_message"]

MAX_MESSAGE_CHARS = 500
MAX_ANSWER_BYTES = 32 * 1024 * 1024
"""The most of any answer read when the call gives no ``max_bytes``. The largest the
providers' specs describe is a list page: Daytona's ``GET /sandbox`` pages 200 Sandboxes,
each with its env, labels and build info (a Dockerfile), some tens of KiB at most; E2B's
``GET /v2/sandboxes`` 100 small ones. 32 MiB is 160 KiB a Sandbox."""


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
        self._timeout = timeout
        import httpx

        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers={**auth_headers, **IDENTITY}, timeout=timeout
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
        max_bytes: int | None = None,
    ) -> httpx.Response:
        """The 2xx answer (or one whose status is in ``accept``, such as a 404 on delete).

        An answer longer than ``max_bytes`` (by default :data:`MAX_ANSWER_BYTES`) is a
        :class:`ProviderError` as soon as the excess arrives: the rest is never read."""
        import httpx

        is_transient: Callable[[BaseException], bool] = lambda exc: isinstance(  # noqa: E731
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
                    response = await self._send(
                        method, path, json_body, params, max_bytes, sandbox_id
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

    def read_json(self, response: httpx.Response, *, sandbox_id: str | None = None) -> Any:
        """The answer's JSON; a body that is not JSON is a :class:`ProviderError` naming the
        request and what came instead."""
        try:
            return response.json()
        except (ValueError, UnicodeDecodeError):  # json's JSONDecodeError is a ValueError
            kind = response.headers.get("content-type", "no content type")
            raise self._unreadable(response, f"not JSON ({kind})", sandbox_id) from None

    def unreadable(
        self, response: httpx.Response, *, sandbox_id: str | None = None
    ) -> ProviderError:
        """The error for an answer that is JSON but not what the provider's spec describes."""
        return self._unreadable(response, "not what its API spec describes", sandbox_id)

    def _unreadable(
        self, response: httpx.Response, what: str, sandbox_id: str | None
    ) -> ProviderError:
        request = response.request
        return self._error(
            ProviderError,
            f"{request.method} {request.url.path} answered {response.status_code} with "
            f"something {what}; is api_url this provider's API?",
            response.status_code,
            sandbox_id,
        )

    async def _send(
        self,
        method: str,
        path: str,
        json_body: Any,
        params: httpx.QueryParams | None,
        max_bytes: int | None,
        sandbox_id: str | None,
    ) -> httpx.Response:
        """One request, its answer read piece by piece up to ``max_bytes``, all of it within
        ``timeout`` (a timeout is :class:`ProviderUnavailable`, retried as httpx's are)."""
        import httpx

        limit = MAX_ANSWER_BYTES if max_bytes is None else max_bytes
        request = self._client.build_request(method, path, json=json_body, params=params)
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._client.send(request, stream=True)
                try:
                    coded = content_coding(response)
                    body, more = (b"", False) if coded else await read_at_most(response, limit)
                finally:
                    await response.aclose()  # unread, the connection is dropped, not reused
        except TimeoutError:
            raise self._error(
                ProviderUnavailable,
                f"{method} {path} timed out: its whole answer did not come within "
                f"{self._timeout:g} s",
                None,
                sandbox_id,
            ) from None
        if coded:
            raise self._error(
                ProviderError,
                f"{method} {public_url(str(request.url))} answered a {coded}-compressed body "
                f"({response.status_code}) though asked for none (Accept-Encoding: identity); "
                "sandboxer does not decompress answers (a small one may expand without "
                "bound), so it was not read; is api_url this provider's API?",
                response.status_code,
                sandbox_id,
            )
        if more:
            # Past the caller's own bound, the tenant's output was too long; past the default,
            # no answer of the provider's API is that long.
            raise self._error(
                ProviderError,
                f"{method} {public_url(str(request.url))} answered more than {limit} bytes "
                f"({response.status_code}); sandboxer stopped reading it there"
                + ("" if max_bytes is not None else "; is api_url this provider's API?"),
                response.status_code,
                sandbox_id,
            )
        # The bytes read, as an ordinary answer (in no content-coding); the headers that
        # described their transfer go.
        headers = [
            (name, value)
            for name, value in response.headers.multi_items()
            if name.lower() not in {"content-encoding", "content-length", "transfer-encoding"}
        ]
        return httpx.Response(
            response.status_code, headers=headers, content=bytes(body), request=request
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
