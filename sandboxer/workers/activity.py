"""A sandbox used through its worker (an exec, a file copy) recorded as activity.

Activity holds off idle reaping (``ttl.idle_reap``, docs/ttl.md#activity): the worker
publishes ``sandboxer.cmd.touch`` for the sandbox (the first one after ``ready`` makes it
``active``). It skips the touch when it sent one within the sandbox's touch interval,
since the domain would record nothing for it anyway.

A use that lasts (a build, an interactive shell, a large copy) is activity for as long
as it lasts, not only when it starts: on a sandbox with an idle limit the worker touches
it once a touch interval until the use ends (:meth:`Activity.in_use`), or the idle expiry
would tear the sandbox down, and the command or copy with it, under its user. Each of
those touches reads the sandbox first and is sent only while it is ready or active: one
paused meanwhile (its command frozen with it) or on its way out would refuse it
``not_ready``, a rejection recorded every interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import msgspec
from nats.aio.client import Client

from sandboxer import subjects
from sandboxer.bus.event_store import EventStore
from sandboxer.cleanup_waits import cancel_until_done
from sandboxer.domain.deadlines import touch_interval
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.events.types import Actor
from sandboxer.ids import new_command_id

__all__ = ["EXEC_ACTOR", "Activity"]

log = logging.getLogger(__name__)

EXEC_ACTOR = Actor(type="atm", id="sandboxer-exec")
"""Whose touches these are (an exec's and a copy's alike)."""
MAX_REMEMBERED_TOUCHES = 10_000
TOUCHABLE = frozenset({"ready", "active"})
"""The states a touch counts in (the domain refuses it in any other, not_ready)."""


class Activity:
    """The touches one worker process sends for the sandboxes it serves."""

    def __init__(self, nc: Client, store: EventStore) -> None:
        self._nc = nc
        self._store = store
        self._touched: dict[str, float] = {}
        """Sandbox -> monotonic time of the last touch sent (a cache: losing it costs a touch)."""

    @contextlib.asynccontextmanager
    async def in_use(self, state: SandboxState) -> AsyncIterator[None]:
        """The block is the sandbox in use: a touch as it starts, and one a touch interval
        for as long as it runs."""
        await self.touch(state)
        keeping = asyncio.ensure_future(self._keep_touching(state))
        try:
            yield
        finally:
            await cancel_until_done(keeping)

    async def touch(self, state: SandboxState) -> None:
        """Record a use of the sandbox as activity; never fails the use."""
        now = time.monotonic()
        last = self._touched.get(state.sandbox_id)
        interval = touch_interval(state.idle_reap_seconds)
        if state.status == "active" and last is not None and now - last < interval:
            return
        if len(self._touched) > MAX_REMEMBERED_TOUCHES:
            self._touched.clear()  # a cache: forgetting costs one redundant touch each
        self._touched[state.sandbox_id] = now
        command = {
            "command_id": new_command_id(),
            "sandbox_id": state.sandbox_id,
            "actor": msgspec.to_builtins(EXEC_ACTOR),
        }
        try:
            await self._nc.jetstream().publish(
                subjects.command_subject("touch"),
                msgspec.json.encode(command),
                headers={"Nats-Msg-Id": command["command_id"]},
                timeout=5,
            )
        except Exception as exc:
            self._touched.pop(state.sandbox_id, None)
            log.warning("could not record activity on %s: %r", state.sandbox_id, exc)

    async def _keep_touching(self, state: SandboxState) -> None:
        if not state.idle_reap_seconds:
            return  # nothing reaps it for idleness: no need to add events to its log
        interval = touch_interval(state.idle_reap_seconds)
        while True:
            await asyncio.sleep(interval)
            try:
                now = (await self._store.load(state.sandbox_id)).state
            except Exception as exc:  # the log unreachable a moment: the next round tries
                log.debug("could not read %s to touch it: %r", state.sandbox_id, exc)
                continue
            if now.status in TOUCHABLE:
                await self.touch(now)
