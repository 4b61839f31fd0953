"""What a request depends on: the gateway's bus connection, the request's actor, a client,
the command id (from ``Idempotency-Key``) and how long to wait.

The actor comes from one dependency, :func:`request_actor`: it is stamped from the API key
the request bears (``Authorization: Bearer <key>``), never chosen by the client. Every
``/v1/`` route but health needs one (401 otherwise), and each key is held to its rate
(429 with ``Retry-After``). What the actor may see is :mod:`sandboxer.domain.key_access`.
A router of its own gets both by depending on :data:`RequestActor` (or :data:`BusClient`,
a bus client acting as that actor).
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

from fastapi import Depends, Header, HTTPException, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from nats.aio.client import Client as Nats

from sandboxer.client import SandboxerClient
from sandboxer.config.catalog import Catalog
from sandboxer.domain.key_state import KeyState
from sandboxer.domain.rate_limit import RateLimiter
from sandboxer.gateway.auth import KeyLookup, bearer_key
from sandboxer.gateway.errors import retry_after
from sandboxer.gateway.streams import KeyStreams
from sandboxer.gateway.transfers import KeyTransfers
from sandboxer.ids import COMMAND_ID_RULE, is_valid_command_id, new_command_id

__all__ = [
    "CHECKED_KEY",
    "MAX_WAIT_SECONDS",
    "BusClient",
    "CommandId",
    "Gateway",
    "KeyStanding",
    "RequestActor",
    "RequestKey",
    "ServiceClient",
    "Standing",
    "Wait",
    "default_actor",
    "key_of",
    "parse_wait",
    "request_actor",
    "request_key",
    "standing_of",
]

MAX_WAIT_SECONDS = 300.0
"""The longest ``?wait=`` a request may ask for: past it, poll the status URL."""

_WAIT = re.compile(r"^(\d{1,6})(s|m)?$")


def default_actor() -> dict[str, Any]:
    """The gateway's own actor, for what no key asks (health): named after the gateway."""
    return {"type": "adm", "id": f"gateway@{socket.gethostname()}"[:128], "project": None}


@dataclass
class Gateway:
    """What every request of one gateway process shares: no state of its own but a hint.

    ``position`` is the highest log position any request's client has seen; a new
    request's client starts from it, so a GET after a POST on this gateway reads the
    POST's writes (the projector waits for that position before answering).
    """

    nc: Nats | None
    catalog: Catalog
    actor: dict[str, Any] = field(default_factory=default_actor)
    project: str | None = field(default_factory=lambda: os.environ.get("SANDBOXER_PROJECT") or None)
    position: int = 0
    limiter: RateLimiter = field(default_factory=RateLimiter)
    """Each key's token bucket in this process (docs/http-api.md#limits)."""
    transfers: KeyTransfers = field(default_factory=KeyTransfers)
    """The execs and copies each key has running in this process (docs/http-api.md#limits)."""
    streams: KeyStreams = field(default_factory=KeyStreams)
    """The event streams each key has open in this process (docs/http-api.md#limits)."""

    def keys(self) -> KeyLookup:
        if self.nc is None:
            raise HTTPException(503, {"code": "bus", "message": "the gateway is not connected"})
        return KeyLookup(self.nc)

    def client_for(self, actor: dict[str, Any]) -> SandboxerClient:
        if self.nc is None:
            raise HTTPException(503, {"code": "bus", "message": "the gateway is not connected"})
        client = SandboxerClient(self.nc, actor=actor)
        client.seen_seq = self.position
        return client

    async def note(self, client: SandboxerClient) -> None:
        self.position = max(self.position, await client.outcomes.position())


def gateway(request: Request) -> Gateway:
    state: Gateway = request.app.state.gateway
    return state


_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from 'sandboxer keys create': Authorization: Bearer sbx_...",
)

_CHALLENGE = 'Bearer realm="sandboxer"'


def _unauthorized(message: str, *, invalid: bool) -> HTTPException:
    challenge = f'{_CHALLENGE}, error="invalid_token"' if invalid else _CHALLENGE
    return HTTPException(
        401,
        {"code": "unauthorized", "message": message},
        headers={"WWW-Authenticate": challenge},
    )


async def key_of(gw: Gateway, header: str | None) -> KeyState:
    """The active key an ``Authorization`` header bears, read from the log (a revoked key
    fails at once); 401 otherwise."""
    if header is None:
        raise _unauthorized(
            "this route needs an API key: send 'Authorization: Bearer <key>' (an administrator "
            "makes one with 'sandboxer keys create')",
            invalid=False,
        )
    key = bearer_key(header)
    state = None if key is None else await gw.keys().active(key)
    if state is None:
        raise _unauthorized(
            "the Authorization header holds no valid API key (expected 'Bearer sbx_...'; the "
            "key may be unknown or revoked)",
            invalid=True,
        )
    return state


CHECKED_KEY = "sandboxer.key"
"""Where in a request's scope state the key already checked before its body was read
(``app.BodyLimit``) is kept, so it is read from the log once."""


async def request_key(
    request: Request,
    gw: Annotated[Gateway, Depends(gateway)],
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> KeyState:
    """The request's API key (read from the log: a revoked key fails at once), within its rate."""
    checked = request.scope.get("state", {}).get(CHECKED_KEY)
    state = (
        checked
        if isinstance(checked, KeyState)
        else await key_of(gw, request.headers.get("authorization"))
    )
    wait = gw.limiter.take(state.key_id, state.rate_per_second, time.monotonic())
    if wait is not None:
        raise HTTPException(
            429,
            {
                "code": "rate_limited",
                "message": f"key {state.key_id} may make {state.rate_per_second} requests per "
                "second (on this gateway); slow down",
            },
            headers={"Retry-After": retry_after(wait)},
        )
    return state


RequestKey = Annotated[KeyState, Depends(request_key)]


KEY_RECHECK_SECONDS = 1.0
"""How often a long response (an event stream) asks the log again whether its key still
stands: a revoked key's stream ends at the first event after that."""


class Standing(Protocol):
    """Whether a request's key is still active (:func:`key_standing`)."""

    def __call__(self, *, fresh: bool = False) -> Awaitable[bool]: ...


async def key_standing(
    request: Request, gw: Annotated[Gateway, Depends(gateway)], _key: RequestKey
) -> Standing:
    """For a response that outlives its request's check: :func:`standing_of` its key."""
    return standing_of(gw, request)


def standing_of(gw: Gateway, request: Request) -> Standing:
    """Whether the request's key is still active, read from the log at the first call, then
    at most every :data:`KEY_RECHECK_SECONDS` (or at once, ``fresh``: right before a command
    or a copy starts). Also for a body read before the route's dependencies run (an exec's
    JSON, files._BodyWhileStanding)."""
    key = bearer_key(request.headers.get("authorization")) or ""
    # Not taken from the request's check: an exec's or a copy's key is checked before its
    # body is read (app.BodyLimit), and a body may take minutes to arrive.
    checked = {"at": float("-inf"), "active": True}

    async def standing(*, fresh: bool = False) -> bool:
        if fresh or time.monotonic() - checked["at"] >= KEY_RECHECK_SECONDS:
            checked["at"] = time.monotonic()
            checked["active"] = await gw.keys().active(key) is not None
        return bool(checked["active"])

    return standing


KeyStanding = Annotated[Standing, Depends(key_standing)]


def request_actor(key: RequestKey) -> dict[str, Any]:
    """Who the request acts as: the one place an actor comes from, stamped from its key."""
    actor = key.actor
    assert actor is not None  # request_key answers active keys only
    return {"type": actor.type, "id": actor.id, "project": actor.project}


RequestActor = Annotated[dict[str, Any], Depends(request_actor)]


async def service_client(
    gw: Annotated[Gateway, Depends(gateway)],
) -> AsyncIterator[SandboxerClient]:
    """A client acting as the gateway itself, for what needs no key (health)."""
    client = gw.client_for(gw.actor)
    try:
        yield client
    finally:
        await gw.note(client)


ServiceClient = Annotated[SandboxerClient, Depends(service_client)]


async def bus_client(
    gw: Annotated[Gateway, Depends(gateway)], actor: RequestActor
) -> AsyncIterator[SandboxerClient]:
    client = gw.client_for(actor)
    try:
        yield client
    finally:
        await gw.note(client)


BusClient = Annotated[SandboxerClient, Depends(bus_client)]


def command_id(
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description=f"the command id ({COMMAND_ID_RULE}): the same key twice is one command",
        ),
    ] = None,
) -> str:
    if idempotency_key is None:
        return new_command_id()
    if not is_valid_command_id(idempotency_key):
        raise HTTPException(
            400,
            {
                "code": "invalid_idempotency_key",
                "message": f"Idempotency-Key must be {COMMAND_ID_RULE}; it becomes the command id",
            },
        )
    return idempotency_key


CommandId = Annotated[str, Depends(command_id)]


def parse_wait(raw: str | None) -> float:
    """``?wait=30s`` (or ``30``, ``2m``): seconds to wait for the outcome, 0 when absent."""
    if raw is None:
        return 0.0
    match = _WAIT.fullmatch(raw.strip())
    seconds = -1.0 if match is None else int(match[1]) * (60 if match[2] == "m" else 1)
    if not 0 <= seconds <= MAX_WAIT_SECONDS:
        raise HTTPException(
            422,
            {
                "code": "invalid_wait",
                "message": f"wait must be seconds such as 30s, 30 or 2m, at most {MAX_WAIT_SECONDS:g}s",
            },
        )
    return float(seconds)


def wait_seconds(
    wait: Annotated[
        str | None,
        Query(
            max_length=16,
            description="wait up to this long (30s, 2m; at most 300s) for the outcome instead of answering 202 at once",
        ),
    ] = None,
) -> float:
    return parse_wait(wait)


Wait = Annotated[float, Depends(wait_seconds)]
