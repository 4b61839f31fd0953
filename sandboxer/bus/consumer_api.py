"""The JetStream consumer API as the guarded durables use it, with nats-py's errors mapped
to sandboxer's at this one place.

nats-py's ``add_consumer`` sends no ``action``, so the server takes it as create-or-update;
a guarded durable is made only with ``action: create``, which fails rather than take over
a consumer of that name a client made meanwhile (bus/guarded_durable.py). That request is
sent here over the connection's public ``request``, on the API subject of the prefix the
service's JetStream contexts use.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.api import DEFAULT_PREFIX, ConsumerConfig
from nats.js.errors import APIError

from sandboxer.bus.publish import is_transient
from sandboxer.errors import BusError, StreamUnavailable

__all__ = ["API_PREFIX", "bus_errors", "create_consumer"]

API_PREFIX = DEFAULT_PREFIX
"""``$JS.API``: the service makes its JetStream contexts with ``nc.jetstream()`` (service.py),
nats-py's default prefix and no domain, as the permissions (bus/permissions.py) assume."""

API_TIMEOUT = 5.0
"""Seconds an API request waits for its answer (nats-py's JetStream context waits as long)."""


@contextlib.contextmanager
def bus_errors(what: str) -> Iterator[None]:
    """nats-py's errors inside the block raised as :class:`StreamUnavailable` when they say
    "not now" (no leader, no answer, reconnecting), as :class:`BusError` otherwise; ``what``
    names the call for the message. Catch the errors that are answers (a consumer not found)
    inside the block."""
    try:
        yield
    except NatsError as exc:  # nats.js.errors.APIError is one too
        if is_transient(exc):
            raise StreamUnavailable(
                f"{what}: JetStream did not answer ({exc!r}); is the NATS cluster healthy?"
            ) from exc
        raise BusError(f"{what} failed: {exc}") from exc


async def create_consumer(
    nc: Client,
    stream: str,
    config: ConsumerConfig,
    *,
    api_prefix: str = API_PREFIX,
    timeout: float = API_TIMEOUT,
) -> str | None:
    """Create the named consumer ``config`` describes, only if none of its name exists.

    Returns None once created (or when it exists exactly so), else the server's reason for
    refusing it (one of that name exists with other settings: err_code 10148). Raises
    :class:`StreamUnavailable` when JetStream could not answer now, :class:`BusError` on
    any other failure of the request.
    """
    what = f"creating consumer {config.name} on {stream}"
    request = {"stream_name": stream, "config": config.as_dict(), "action": "create"}
    subject = f"{api_prefix}.CONSUMER.CREATE.{stream}.{config.name}"
    with bus_errors(what):
        reply = await nc.request(subject, json.dumps(request).encode(), timeout=timeout)
    try:
        error = json.loads(reply.data).get("error")
    except (ValueError, AttributeError) as exc:
        raise BusError(f"{what}: the answer is not a JetStream API reply: {exc}") from exc
    if error is None:
        return None
    refusal = APIError(
        code=error.get("code"), err_code=error.get("err_code"), description=error.get("description")
    )
    if is_transient(refusal):  # no leader yet, mid-election
        raise StreamUnavailable(f"{what}: {refusal.description} ({refusal.code})") from refusal
    return f"{refusal.description} (err_code {refusal.err_code})"
