"""What the HTTP clients that talk to servers we do not run share: a bounded read of an
answer's body, and a URL as it may be shown.

Used by the hosted backends' provider client (:mod:`sandboxer.hosted.http`) and by the
event deliveries to the State Hub and the meter export
(:mod:`sandboxer.workers.http_delivery`). Their servers come from configuration (a wrong
``api_url``, a misbehaving or hostile endpoint), so an answer's body may be huge or never
end: it is read as it arrives and the read stops at a bound, never held whole. The bound on
time is each caller's: the read is inside its ``asyncio.timeout``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    import httpx  # only its Response type: the callers import httpx where they use it

__all__ = ["public_url", "read_at_most"]


async def read_at_most(answer: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """The first ``limit`` bytes of a streamed ``answer``'s body, and whether it went on past
    them; no more is read (the caller closes the answer, which drops the connection). The
    bytes are decoded ones, so the bound holds for a compressed body too."""
    body = bytearray()
    async for chunk in answer.aiter_bytes():
        body.extend(chunk)
        if len(body) > limit:
            return bytes(body[:limit]), True
    return bytes(body), False


def public_url(url: str) -> str:
    """``url`` as it may be shown or logged: without user info or query (either may hold a
    credential)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
