"""How many event streams one API key has open on this gateway, and the cap on them
(docs/http-api.md#limits).

An event stream (``GET /v1/events``, ``GET /v1/sandboxes/{id}/events``) never ends on its
own: each holds a reader of the log on the bus and its buffers in the gateway's memory for
as long as its client stays. A key's rate bounds how fast it opens them, not how many it
keeps: without a cap one key could open one a request until the gateway's memory (and the
bus's consumers) are gone. The routes take a slot of the request's key before the stream
begins (so one past the cap is a 429, not a stream) and give it back when the stream ends,
however it ends: the client hangs up, the key is revoked, the log cannot be read.
"""

from __future__ import annotations

from dataclasses import dataclass

from sandboxer.config.settings import DEFAULT_HTTP_MAX_STREAMS
from sandboxer.gateway.transfers import KeyTransfers

__all__ = ["STREAM_RETRY_AFTER", "KeyStreams"]

STREAM_RETRY_AFTER = "5"
"""``Retry-After`` of a ``stream_limit`` 429: a slot frees when one of the key's streams
ends, which the gateway cannot foresee."""


@dataclass
class KeyStreams(KeyTransfers):
    """The event streams each key has open in this process: counted as a key's execs and
    copies are (transfers.py), against a cap of their own (``SANDBOXER_HTTP_MAX_STREAMS``)."""

    limit: int = DEFAULT_HTTP_MAX_STREAMS
