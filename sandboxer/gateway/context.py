"""What a request depends on: the gateway's bus connection, the request's actor, a client,
the command id (from ``Idempotency-Key``) and how long to wait.

The actor comes from one dependency, :func:`request_actor`. Until API keys exist it is the
gateway's own actor (an administrator, as the CLI is on its operator's machine: the
gateway listens on loopback by default); with keys it will be stamped from the key.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Query, Request
from nats.aio.client import Client as Nats

from sandboxer.client import SandboxerClient
from sandboxer.config.catalog import Catalog
from sandboxer.ids import COMMAND_ID_RULE, is_valid_command_id, new_command_id

__all__ = [
    "MAX_WAIT_SECONDS",
    "BusClient",
    "CommandId",
    "Gateway",
    "RequestActor",
    "Wait",
    "default_actor",
    "parse_wait",
]

MAX_WAIT_SECONDS = 300.0
"""The longest ``?wait=`` a request may ask for: past it, poll the status URL."""

_WAIT = re.compile(r"^(\d{1,6})(s|m)?$")


def default_actor() -> dict[str, Any]:
    """The gateway's actor until keys exist: an administrator named after the gateway."""
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

    def client_for(self, actor: dict[str, Any]) -> SandboxerClient:
        if self.nc is None:
            raise HTTPException(503, {"code": "bus", "message": "the gateway is not connected"})
        client = SandboxerClient(self.nc, actor=actor)
        client.seen_seq = self.position
        return client

    def note(self, client: SandboxerClient) -> None:
        self.position = max(self.position, client.seen_seq)


def gateway(request: Request) -> Gateway:
    state: Gateway = request.app.state.gateway
    return state


def request_actor(gw: Annotated[Gateway, Depends(gateway)]) -> dict[str, Any]:
    """Who the request acts as: the one place an actor comes from (keys will replace it)."""
    return {**gw.actor, "project": gw.project}


RequestActor = Annotated[dict[str, Any], Depends(request_actor)]


async def bus_client(
    gw: Annotated[Gateway, Depends(gateway)], actor: RequestActor
) -> AsyncIterator[SandboxerClient]:
    client = gw.client_for(actor)
    try:
        yield client
    finally:
        gw.note(client)


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
