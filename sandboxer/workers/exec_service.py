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
"""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from sandboxer.bus.event_store import EventStore
from sandboxer.errors import SandboxerError
from sandboxer.extensions.base import Extension
from sandboxer.ids import is_valid_sandbox_id

__all__ = ["ExecRequest", "ExecService"]

log = logging.getLogger(__name__)

HEADER = "Sandboxer-Exec"
MAX_ARGV_BYTES = 128 * 1024


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

    async def _reachable(self, sandbox_id: str) -> tuple[bool, str | None]:
        """Whether this worker should answer for ``sandbox_id``, and the sandbox's host."""
        state = (await self._store.load(sandbox_id)).state
        if state.extension != self._extension.id or state.status not in {"ready", "active"}:
            return False, None
        if self._extension.host_local:
            found = await self._extension.list_sandboxes()
            if not any(s.sandbox_id == sandbox_id and s.alive for s in found):
                return False, None
        return True, state.host

    async def _serve(self, msg: Msg) -> None:
        sandbox_id = msg.subject.rsplit(".", 1)[-1]
        if not msg.reply or not is_valid_sandbox_id(sandbox_id):
            return
        reachable, host = await self._reachable(sandbox_id)
        if not reachable:
            return

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
        await send("started", b"")
        try:
            code = await self._extension.exec(
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
