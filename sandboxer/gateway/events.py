"""Live events as Server-Sent Events, resumable without loss.

Each SSE message is one event of the log: ``id:`` is its stream sequence,
``event:`` its type and ``data:`` its JSON. A client that reconnects sends the
last id it saw as ``Last-Event-ID`` (browsers do so on their own), or
``?after=N``, and the stream goes on from the next event: nothing is lost and
nothing comes twice, because the log is read by sequence (the client's ordered
reader), never from a live subscription that could have moved on.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi.sse import ServerSentEvent

from sandboxer.client import SandboxerClient

__all__ = ["EventFilter", "event_stream", "start_after"]

MAX_SEQUENCE = 2**63 - 1


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
    visible: Callable[[Mapping[str, Any]], Awaitable[bool]] | None = None,
) -> AsyncIterator[ServerSentEvent]:
    """``visible`` (gateway/auth.py's ``event_visibility``) hides what the request's key may
    not see: events of other projects' sandboxes, snapshots and accounts."""
    async for seq, event in client.events(
        sandbox_id=chosen.sandbox_id, follow=follow, start_seq=start_seq
    ):
        if chosen.matches(event) and (visible is None or await visible(event)):
            yield ServerSentEvent(
                id=str(seq),
                event=str(event.get("type") or "event"),
                raw_data=json.dumps(event, separators=(",", ":"), ensure_ascii=False),
            )
