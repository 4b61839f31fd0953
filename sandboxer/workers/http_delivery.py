"""POSTing events to an HTTP endpoint until it takes them: the one boundary that the meter
export (docs/payments.md#export) and the State Hub projection (docs/integrations/state-hub.md)
share.

One POST per event, retried with exponential backoff (stamina, no limit of attempts or time)
while the endpoint is unreachable, times out or answers an error; a 2xx is delivered. The
caller says which answers are final (``refuses``): those raise :class:`DeliveryRefused` at
once, because sending the same body again cannot succeed. Every other failure is a
:class:`DeliveryFailed` handed to ``on_failure`` (the State Hub's status shows the last one)
before the next attempt. Nothing here logs a header: a bearer token stays out of the log.

An attempt has one deadline for all of it (``timeout``: connecting, sending, the answer's
status and what is read of its body), not httpx's per-read one, which a hub dripping a byte at
a time never reaches; and of the answer's body at most :data:`MAX_REASON_BYTES` are read (a
2xx's none), asked for and read uncompressed (a compressed one is not read), so an endless,
huge or compressed answer neither holds the delivery nor fills the memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import stamina

from sandboxer.errors import DeliveryFailed, DeliveryRefused, SandboxerError
from sandboxer.http_body import IDENTITY, content_coding, public_url, read_at_most

if TYPE_CHECKING:
    # httpx is imported where a delivery is made: `sandboxer up` loads this module, and its
    # meter export and State Hub run only when configured.
    import httpx

__all__ = ["HttpDelivery", "never_refused", "public_url"]

log = logging.getLogger(__name__)

RETRY_WAIT_MAX = 30.0
"""Longest pause between two POSTs to an endpoint that is down."""

MAX_REASON_CHARS = 300
MAX_REASON_BYTES = 4096
"""Read of an error answer's body, for its reason: the rest is never read."""


def never_refused(_status: int) -> bool:
    """Every error answer is retried (the meter export: usage is never dropped)."""
    return False


def _without_user_info(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


async def _answer_reason(answer: httpx.Response) -> str:
    """The endpoint's words, for a log line and the status: one line, printable, short; read
    from at most the first :data:`MAX_REASON_BYTES` of its body (it may never end), and not
    from a compressed one (it may expand without bound; :mod:`sandboxer.http_body`)."""
    coded = content_coding(answer)
    if coded:
        return f"{answer.status_code} {answer.reason_phrase} (a {coded} body, not read)"
    head, _more = await read_at_most(answer, MAX_REASON_BYTES)
    raw = head.decode("utf-8", errors="replace")
    text = "".join(c if c.isprintable() else " " for c in raw[:MAX_REASON_CHARS]).strip()
    return f"{answer.status_code} {answer.reason_phrase}" + (f": {text}" if text else "")


class HttpDelivery:
    """POSTs bodies to one endpoint, each until it is taken or refused for good."""

    def __init__(
        self,
        url: str,
        *,
        label: str,
        client: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
        wait_max: float = RETRY_WAIT_MAX,
        refuses: Callable[[int], bool] = never_refused,
        on_failure: Callable[[DeliveryFailed], None] | None = None,
        auth: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        import httpx

        self.url = url
        self.shown_url = public_url(url)
        self._label = label
        self._own_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=timeout)
        self._timeout = timeout
        self._wait_max = wait_max
        self._refuses = refuses
        self._on_failure = on_failure
        self._auth = auth

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    async def post(self, body: bytes, headers: Mapping[str, str], *, what: str) -> int:
        """POST ``body`` until a 2xx (its status is returned); raise :class:`DeliveryRefused`
        for an answer ``refuses``. ``auth`` is called for each attempt (a token read from a
        file may change meanwhile); ``what`` names the delivery in log lines."""
        async for attempt in stamina.retry_context(
            on=lambda exc: isinstance(exc, DeliveryFailed) and not isinstance(exc, DeliveryRefused),
            attempts=None,
            timeout=None,
            wait_initial=0.2,
            wait_max=self._wait_max,
        ):
            with attempt:
                try:
                    return await self._attempt(body, headers)
                except DeliveryRefused:
                    raise
                except DeliveryFailed as failed:
                    log.warning("%s: %s; retrying %s", self._label, failed.message, what)
                    if self._on_failure is not None:
                        self._on_failure(failed)
                    raise
        raise AssertionError("unreachable: retries have no limit")  # pragma: no cover

    async def _attempt(self, body: bytes, headers: Mapping[str, str]) -> int:
        import httpx

        try:
            auth = self._auth() if self._auth is not None else {}
            sent_headers = {"Content-Type": "application/json", **IDENTITY, **headers, **auth}
        except SandboxerError as exc:  # a token reference that cannot be read (now)
            raise DeliveryFailed(f"no credentials for {self.shown_url}: {exc.message}") from None
        # User info in the URL is sent as Basic auth, unless ``auth`` gives its own header.
        url = _without_user_info(self.url) if "Authorization" in auth else self.url
        try:
            async with asyncio.timeout(self._timeout):
                return await self._exchange(url, body, sent_headers)
        except (TimeoutError, httpx.TimeoutException) as slow:
            raise DeliveryFailed(
                f"{self.shown_url} did not answer in time ({type(slow).__name__})"
            ) from None
        except httpx.HTTPError as down:
            # The exception's text names the URL at most, never a header.
            raise DeliveryFailed(
                f"{self.shown_url} is unreachable ({type(down).__name__}: {down})"
            ) from None

    async def _exchange(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        """One POST: its status once a 2xx's head arrives (its body is never read)."""
        async with self._client.stream("POST", url, content=body, headers=headers) as answer:
            if answer.is_success:
                return answer.status_code
            reason = f"{self.shown_url} answered {await _answer_reason(answer)}"
        if self._refuses(answer.status_code):
            raise DeliveryRefused(reason, status=answer.status_code)
        raise DeliveryFailed(reason, status=answer.status_code)
