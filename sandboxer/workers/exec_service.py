"""Running commands inside sandboxes for bus clients (``sandboxer.exec.<sandbox_id>``).

A core request/reply exchange with a streamed answer. The client publishes
``{"argv": [...], "service": NAME?}`` with a reply inbox (``service`` picks a
compose sandbox's container; other backends refuse it); the worker that owns the sandbox
answers on that inbox with a ``started`` message, then ``stdout``/``stderr``
chunks as they come, then ``exit`` carrying ``{"exit_code": N}`` (or
``{"error": "..."}``). The kind of each message is its ``Sandboxer-Exec``
header. Workers that cannot reach the sandbox stay silent: a host-local
backend's workers each check whether the sandbox is theirs; a remote
backend's workers share a queue group, so exactly one of them answers.

An exec is activity: the worker publishes ``sandboxer.cmd.touch`` for the sandbox, which
holds off idle reaping (the first one after ``ready`` makes it ``active``). It skips the
touch when it sent one within the sandbox's touch interval, since the domain would record
nothing for it anyway.

A paused sandbox (or one being paused or resumed) runs nothing: its processes are frozen,
and a command entering it would freeze too. The worker that owns it answers at once with an
error saying so, rather than staying silent as for a sandbox it cannot reach.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Literal

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from sandboxer import subjects
from sandboxer.bus.event_store import EventStore
from sandboxer.domain.deadlines import touch_interval
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.errors import SandboxerError
from sandboxer.events.types import Actor
from sandboxer.extensions.base import Extension
from sandboxer.ids import is_valid_sandbox_id, new_command_id
from sandboxer.workers.backend_for import backend_for

__all__ = ["ExecRequest", "ExecService"]

log = logging.getLogger(__name__)

HEADER = "Sandboxer-Exec"
MAX_ARGV_BYTES = 128 * 1024
EXEC_ACTOR = Actor(type="atm", id="sandboxer-exec")
RUNNING = frozenset({"ready", "active"})
FROZEN = frozenset({"pausing", "paused", "resuming"})
MAX_REMEMBERED_TOUCHES = 10_000


class ExecRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    argv: list[str]
    service: str | None = None
    """Compose sandboxes: the service whose container runs ``argv`` (the first by default)."""


class ExecService:
    def __init__(self, nc: Client, store: EventStore, extension: Extension) -> None:
        self._nc = nc
        self._store = store
        self._extension = extension
        self._sub: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._touched: dict[str, float] = {}
        """Sandbox -> monotonic time of the last touch sent (a cache: losing it costs a touch)."""

    async def start(self) -> None:
        queue = "" if self._extension.host_local else f"exec-{self._extension.id}"
        self._sub = await self._nc.subscribe("sandboxer.exec.*", queue=queue, cb=self._on_request)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_request(self, msg: Msg) -> None:
        task = asyncio.create_task(self._serve(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reachable(self, sandbox_id: str) -> SandboxState | None:
        """The sandbox's state when this worker should answer for ``sandbox_id``."""
        state = (await self._store.load(sandbox_id)).state
        if state.extension != self._extension.id or state.status not in RUNNING | FROZEN:
            return None
        if self._extension.host_local:
            found = await self._extension.list_sandboxes()
            if not any(s.sandbox_id == sandbox_id and s.alive for s in found):
                return None
        return state

    async def _touch(self, state: SandboxState) -> None:
        """Record the exec as activity (see the module docstring); never fails the exec."""
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

    async def _serve(self, msg: Msg) -> None:
        sandbox_id = msg.subject.rsplit(".", 1)[-1]
        if not msg.reply or not is_valid_sandbox_id(sandbox_id):
            return
        state = await self._reachable(sandbox_id)
        if state is None:
            return
        host = state.host

        async def send(kind: Literal["started", "stdout", "stderr", "exit"], data: bytes) -> None:
            await self._nc.publish(msg.reply, data, headers={HEADER: kind})

        try:
            request = msgspec.json.decode(msg.data, type=ExecRequest)
            if not request.argv or len(msg.data) > MAX_ARGV_BYTES:
                raise SandboxerError("argv must be a non-empty list of strings (under 128 KiB)")
            if any("\x00" in arg for arg in request.argv):
                raise SandboxerError("argv must not contain NUL bytes")
        except (msgspec.DecodeError, SandboxerError) as exc:
            await send("exit", msgspec.json.encode({"error": f"invalid exec request: {exc}"}))
            return
        if state.status in FROZEN:
            reason = f"sandbox {sandbox_id} is {state.status}: its processes are frozen and run "
            reason += f"nothing; resume it first (sandboxer resume {sandbox_id})"
            await send("exit", msgspec.json.encode({"error": reason}))
            return
        await send("started", b"")
        await self._touch(state)
        try:
            backend = await backend_for(self._store, self._extension, state)  # BYOK
            code = await backend.exec(
                sandbox_id, request.argv, send, host=host, service=request.service
            )
            result: dict[str, object] = {"exit_code": code}
        except SandboxerError as exc:
            result = {"error": exc.message}
        except Exception as exc:
            log.exception("exec in %s failed", sandbox_id)
            result = {"error": f"exec failed: {exc}"}
        await self._nc.flush()
        await send("exit", msgspec.json.encode(result))
