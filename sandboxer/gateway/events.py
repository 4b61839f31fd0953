"""Live events as Server-Sent Events, resumable without loss.

Each SSE message is one event of the log: ``id:`` is its stream sequence,
``event:`` its type and ``data:`` its JSON. A client that reconnects sends the
last id it saw as ``Last-Event-ID`` (browsers do so on their own), or
``?after=N``, and the stream goes on from the next event: nothing is lost and
nothing comes twice, because the log is read by sequence (the client's ordered
reader), never from a live subscription that could have moved on.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Header, HTTPException, Query
from fastapi.sse import EventSourceResponse, ServerSentEvent

from sandboxer.client import SandboxerClient
from sandboxer.gateway.auth import event_visibility, require_sandbox
from sandboxer.gateway.common import ERRORS, SSE_ERRORS, SandboxId
from sandboxer.gateway.context import (
    KEY_RECHECK_SECONDS,
    BusClient,
    Gateway,
    KeyStanding,
    RequestKey,
    gateway,
    request_actor,
)
from sandboxer.gateway.models import PROJECT, SANDBOX_ID
from sandboxer.gateway.streams import STREAM_RETRY_AFTER

__all__ = ["EventFilter", "event_stream", "router", "start_after"]

MAX_SEQUENCE = 2**63 - 1

T = TypeVar("T")


@dataclass(frozen=True)
class EventFilter:
    sandbox_id: str | None = None
    project: str | None = None
    types: Collection[str] = ()

    def matches(self, event: Mapping[str, Any]) -> bool:
        if self.types and event.get("type") not in self.types:
            return False
        if self.project is not None:
            actor = event.get("actor")
            owner = actor.get("project") if isinstance(actor, dict) else None
            if self.project not in {owner, event.get("project")}:
                return False
        return True


def start_after(last_event_id: str | None, after: int | None) -> int:
    """The sequence to read from: after the later of ``Last-Event-ID`` and ``?after=``."""
    seen = max(int(last_event_id) if last_event_id else 0, after or 0)
    return seen + 1


async def event_stream(
    client: SandboxerClient,
    chosen: EventFilter,
    *,
    start_seq: int,
    follow: bool,
    visible: Callable[[Mapping[str, Any], int], Awaitable[bool]] | None = None,
    standing: Callable[[], Awaitable[bool]] | None = None,
) -> AsyncIterator[ServerSentEvent]:
    """``visible`` (gateway/auth.py's ``event_visibility``) hides what the request's key may
    not see: events of other projects' sandboxes, snapshots and accounts. ``standing``
    (context.py's ``key_standing``) ends the stream once the key is revoked."""
    reading = client.events(sandbox_id=chosen.sandbox_id, follow=follow, start_seq=start_seq)
    if standing is not None:
        reading = _while_standing(reading, standing)
    async for seq, event in reading:
        if chosen.matches(event) and (visible is None or await visible(event, seq)):
            yield ServerSentEvent(
                id=str(seq),
                event=str(event.get("type") or "event"),
                raw_data=json.dumps(event, separators=(",", ":"), ensure_ascii=False),
            )


async def _while_standing(
    reading: AsyncIterator[T], standing: Callable[[], Awaitable[bool]]
) -> AsyncIterator[T]:
    """``reading``'s items until the key is found revoked: looked at with each item, and
    every ``KEY_RECHECK_SECONDS`` while none comes. Looked at only with each item, a quiet
    sandbox's stream (one destroyed, say) of a revoked key held its reader of the log and its
    slot (streams.py) until its client left, or for ever."""
    pending: asyncio.Task[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(reading))
            done, _ = await asyncio.wait({pending}, timeout=KEY_RECHECK_SECONDS)
            if not await standing():
                return  # revoked since the stream began: it hears nothing more
            if not done:
                continue
            try:
                item = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield item
    finally:
        if pending is not None and not pending.done():
            pending.cancel()  # the reader stops where it waits (and unsubscribes)
            await asyncio.gather(pending, return_exceptions=True)
        aclose = getattr(reading, "aclose", None)
        if aclose is not None:
            await aclose()


# -- the routes --------------------------------------------------------------------------------

router = APIRouter(prefix="/v1", responses=ERRORS, dependencies=[Depends(request_actor)])
"""Each route needs an API key (docs/http-api.md#keys)."""


async def _visible_sandbox_id(sandbox_id: SandboxId, client: BusClient) -> str:
    """The path's sandbox, checked before a response starts (an event stream cannot answer
    404 once it has begun)."""
    await require_sandbox(client, sandbox_id)
    return sandbox_id


VisibleSandboxId = Annotated[str, Depends(_visible_sandbox_id)]


async def _stream_slot(
    gw: Annotated[Gateway, Depends(gateway)], key: RequestKey
) -> AsyncIterator[None]:
    """One of the key's event streams on this gateway (streams.py), taken before the stream
    begins (past the cap it is a 429, not a stream) and given back when the response ends:
    FastAPI leaves a dependency's ``finally`` until the stream is over, whether it ended, its
    client hung up, its key was revoked or reading the log failed."""
    streams = gw.streams
    if not streams.take(key.key_id):
        raise HTTPException(
            429,
            {
                "code": "stream_limit",
                "message": f"key {key.key_id} already has {streams.limit} event streams open "
                "on this gateway, the most one key may hold at once "
                "(SANDBOXER_HTTP_MAX_STREAMS): close one it no longer reads, or watch several "
                "sandboxes with one stream of /v1/events",
            },
            headers={"Retry-After": STREAM_RETRY_AFTER},
        )
    try:
        yield
    finally:
        streams.release(key.key_id)


StreamSlot = Annotated[None, Depends(_stream_slot)]


LastEventId = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        pattern=r"^\d{1,19}$",
        description="the last id received: the stream goes on after it",
    ),
]
After = Annotated[
    int | None,
    Query(ge=0, le=MAX_SEQUENCE, description="as Last-Event-ID: start after this sequence"),
]
Types = Annotated[
    list[str] | None,
    Query(alias="type", max_length=50, description="only these event types (repeat or comma list)"),
]
Follow = Annotated[bool, Query(description="false: send what the log holds, then end")]


def _types(raw: list[str] | None) -> set[str]:
    names = {part.strip() for item in raw or () for part in item.split(",") if part.strip()}
    return {name[:64] for name in names}


@router.get("/events", response_class=EventSourceResponse, responses=SSE_ERRORS, tags=["events"])
async def events(
    client: BusClient,
    standing: KeyStanding,
    _slot: StreamSlot,
    last_event_id: LastEventId = None,
    after: After = None,
    sandbox_id: Annotated[str | None, Query(alias="sandbox", pattern=SANDBOX_ID)] = None,
    project: Annotated[str | None, Query(pattern=PROJECT)] = None,
    types: Types = None,
    follow: Follow = True,
) -> AsyncIterator[ServerSentEvent]:
    """Every event of the log as Server-Sent Events (``id:`` is the stream sequence),
    filtered by sandbox, project and type; resumes after ``Last-Event-ID`` or ``?after=``."""
    chosen = EventFilter(sandbox_id=sandbox_id, project=project, types=_types(types))
    start = start_after(last_event_id, after)
    visible = event_visibility(client)
    async for item in event_stream(
        client, chosen, start_seq=start, follow=follow, visible=visible, standing=standing
    ):
        yield item


@router.get(
    "/sandboxes/{sandbox_id}/events",
    response_class=EventSourceResponse,
    responses=SSE_ERRORS,
    tags=["events"],
)
async def sandbox_events(
    sandbox_id: VisibleSandboxId,
    client: BusClient,
    standing: KeyStanding,
    _slot: StreamSlot,
    last_event_id: LastEventId = None,
    after: After = None,
    types: Types = None,
    follow: Follow = True,
) -> AsyncIterator[ServerSentEvent]:
    """One sandbox's events as Server-Sent Events; resumes as /v1/events does."""
    chosen = EventFilter(sandbox_id=sandbox_id, types=_types(types))
    start = start_after(last_event_id, after)
    visible = event_visibility(client)
    async for item in event_stream(
        client, chosen, start_seq=start, follow=follow, visible=visible, standing=standing
    ):
        yield item
