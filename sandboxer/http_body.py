"""What the HTTP clients that talk to servers we do not run share: a bounded read of an
answer's body, and a URL as it may be shown.

Used by the hosted backends' provider client (:mod:`sandboxer.hosted.http`) and by the
event deliveries to the State Hub and the meter export
(:mod:`sandboxer.workers.http_delivery`). Their servers come from configuration (a wrong
``api_url``, a misbehaving or hostile endpoint), so an answer's body may be huge or never
end: it is read as it arrives and the read stops at a bound, never held whole. The bound on
time is each caller's: the read is inside its ``asyncio.timeout``.

The bound counts bytes as they came over the wire, never decompressed ones: a small
compressed chunk expands a thousandfold in one step of a decoder (a gzip of zeros; more when
codings are stacked, ``gzip, gzip``), so a bound checked after the decoder has run holds
nothing, and httpx decodes whatever content-coding an answer names, asked for or not. So the
requests ask for none (:data:`IDENTITY`), nothing decompresses an answer, and one that comes
compressed anyway is refused by its caller (:func:`content_coding`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    import httpx  # only its Response type: the callers import httpx where they use it

__all__ = ["IDENTITY", "content_coding", "public_url", "read_at_most"]

IDENTITY = {"Accept-Encoding": "identity"}
"""Sent with every request: the answer is wanted as it is, not compressed (httpx asks for
gzip and deflate unless told otherwise)."""


async def read_at_most(answer: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """The first ``limit`` bytes of a streamed ``answer``'s body, and whether it went on past
    them; no more is read (the caller closes the answer, which drops the connection). The
    bytes are the raw ones, never decompressed (see the module's doc): a caller refuses an
    answer with a :func:`content_coding` rather than read it."""
    if answer.is_stream_consumed:
        # Already in memory (a transport that answers whole, as httpx.MockTransport does):
        # nothing is left to bound, and its raw stream cannot be read again.
        whole = answer.content
        return whole[:limit], len(whole) > limit
    body = bytearray()
    async for chunk in answer.aiter_raw():
        body.extend(chunk)
        if len(body) > limit:
            return bytes(body[:limit]), True
    return bytes(body), False


def content_coding(answer: httpx.Response) -> str | None:
    """The content-codings ``answer`` says its body is in (``gzip``; ``gzip, br``), None for
    none: we asked for identity, so such a body is one we do not read."""
    codings = answer.headers.get_list("content-encoding", split_commas=True)
    named = [c.strip().lower() for c in codings if c.strip().lower() not in {"", "identity"}]
    return ", ".join(named) or None


def public_url(url: str) -> str:
    """``url`` as it may be shown or logged: without user info or query (either may hold a
    credential)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
