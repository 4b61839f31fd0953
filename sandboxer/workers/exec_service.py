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

Standard input (``"stdin": true``): the ``started`` message's body is then
``{"stdin": INBOX}``, a subject the worker subscribes to for this exec only. The
client sends each chunk there as a request (header ``Sandboxer-Exec-Stdin: data``)
and the end of input as ``end``; the worker answers each once the chunk is queued
for the command, so a command that reads slowly holds the client back instead of
filling the worker's memory. Input that stops arriving for ``STDIN_IDLE`` seconds
stops the command. A backend that cannot stream input answers an ``exit`` with an
``error`` from :class:`~sandboxer.errors.Unsupported` saying why.

``"timeout": SECONDS`` bounds the command: past it the backend's call is cancelled,
which kills the command, and the ``exit`` carries ``{"error": ..., "timed_out": true}``.

Files (``sandboxer.files.<sandbox_id>``, :mod:`sandboxer.workers.file_service`) are served
by the same workers, through the same backend exec.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Literal

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from sandboxer import subjects
from sandboxer.bus.event_store import EventStore
from sandboxer.domain.deadlines import touch_interval
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.errors import SandboxerError, Unsupported
from sandboxer.events.types import Actor
from sandboxer.extensions.base import Extension, OutputSink
from sandboxer.ids import new_command_id
from sandboxer.workers.backend_for import backend_for
from sandboxer.workers.key_reach import key_actor, reach_target, subscriptions
from sandboxer.workers.sandbox_reach import FROZEN, frozen_reason, reachable, takes_stdin

if TYPE_CHECKING:
    from sandboxer.config.settings import Settings
    from sandboxer.workers.file_service import FileService

__all__ = ["ExecRequest", "ExecService", "StdinInbox"]

log = logging.getLogger(__name__)

HEADER = "Sandboxer-Exec"
MAX_ARGV_BYTES = 128 * 1024
EXEC_ACTOR = Actor(type="atm", id="sandboxer-exec")
MAX_REMEMBERED_TOUCHES = 10_000
STDIN_HEADER = "Sandboxer-Exec-Stdin"
STDIN_IDLE = 120.0
"""Seconds without a chunk of input (or its end) after which the command is stopped."""
STDIN_QUEUE = 8
"""Chunks of input held for the command before the client's next chunk waits."""
MAX_TIMEOUT = 7 * 24 * 3600.0
OUTPUT_CHUNK = 64 * 1024
"""Most bytes of output in one message (NATS's default max payload is 1 MiB)."""


class ExecRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    argv: list[str]
    service: str | None = None
    """Compose sandboxes: the service whose container runs ``argv`` (the first by default)."""
    stdin: bool = False
    """True: the client streams standard input to the inbox the ``started`` message names."""
    timeout: float | None = None
    """Seconds the command may run before it is killed (no limit when absent)."""


def check_timeout(timeout: float | None) -> None:
    """A timeout is a positive number of seconds, at most a week (and not NaN)."""
    if timeout is not None and not 0 < timeout <= MAX_TIMEOUT:
        raise SandboxerError(f"timeout must be seconds above 0 and at most {MAX_TIMEOUT:.0f}")


class StdinInbox:
    """One exec's input: chunks a client sends to ``subject``, handed on in order."""

    def __init__(self, nc: Client, *, idle: float = STDIN_IDLE) -> None:
        self._nc = nc
        self._idle = idle
        # Under ``sandboxer.``, not ``_INBOX.``: clients may publish here, and never into
        # other connections' inboxes (docs/security.md).
        self.subject = f"sandboxer.stdin.{secrets.token_hex(16)}"
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=STDIN_QUEUE)
        self._sub: Subscription | None = None

    async def open(self) -> None:
        self._sub = await self._nc.subscribe(self.subject, cb=self._on_chunk)

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def _on_chunk(self, msg: Msg) -> None:
        end = (msg.headers or {}).get(STDIN_HEADER) == "end"
        if msg.data:
            await self._queue.put(msg.data)  # waits while the command is behind: backpressure
        if end:
            await self._queue.put(None)
        if msg.reply:
            await self._nc.publish(msg.reply, b"")

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            try:
                chunk = await asyncio.wait_for(self._queue.get(), self._idle)
            except TimeoutError:
                raise SandboxerError(
                    f"standard input stopped arriving for {self._idle:.0f} s without its end; "
                    "the command was stopped"
                ) from None
            if chunk is None:
                return
            yield chunk


class ExecService:
    def __init__(
        self,
        nc: Client,
        store: EventStore,
        extension: Extension,
        *,
        settings: Settings | None = None,
    ) -> None:
        self._nc = nc
        self._store = store
        self._extension = extension
        self._subs: list[Subscription] = []
        self._files: FileService | None = None
        if settings is not None:  # files in and out ride on exec (docs/protocol.md#files)
            from sandboxer.workers.file_service import FileService

            self._files = FileService(nc, store, extension, settings, touch=self.touch)
        self._tasks: set[asyncio.Task[None]] = set()
        self._touched: dict[str, float] = {}
        """Sandbox -> monotonic time of the last touch sent (a cache: losing it costs a touch)."""

    async def start(self) -> None:
        queue = "" if self._extension.host_local else f"exec-{self._extension.id}"
        for subject in subscriptions("exec"):  # the client identity's, and API keys'
            self._subs.append(await self._nc.subscribe(subject, queue=queue, cb=self._on_request))
        if self._files is not None:
            await self._files.start()

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        if self._files is not None:
            await self._files.stop()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_request(self, msg: Msg) -> None:
        task = asyncio.create_task(self._serve(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def touch(self, state: SandboxState) -> None:
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
        target = reach_target(msg.subject)
        if not msg.reply or target is None:
            return
        sandbox_id, key_id = target
        state = await reachable(self._store, self._extension, sandbox_id)
        if state is None:
            return
        if key_id is not None and await key_actor(self._store, key_id, state) is None:
            return  # a key of another project: as for a sandbox that does not exist
        reply = msg.reply

        async def send(kind: Literal["started", "stdout", "stderr", "exit"], data: bytes) -> None:
            # A backend may hand output over whole (Daytona's arrives when the command
            # ends): split, so no message passes the server's max payload.
            step = OUTPUT_CHUNK if kind in ("stdout", "stderr") else len(data)
            for start in range(0, len(data), step or 1):
                await self._nc.publish(reply, data[start : start + step], headers={HEADER: kind})
            if not data:
                await self._nc.publish(reply, data, headers={HEADER: kind})

        try:
            request = parse_request(msg.data)
        except SandboxerError as exc:
            await send("exit", msgspec.json.encode({"error": f"invalid exec request: {exc}"}))
            return
        if state.status in FROZEN:
            await send("exit", msgspec.json.encode({"error": frozen_reason(state)}))
            return
        inbox: StdinInbox | None = None
        try:
            backend = await backend_for(self._store, self._extension, state)  # BYOK
            if request.stdin:
                inbox = await self._open_stdin(backend, sandbox_id)
            body = msgspec.json.encode({"stdin": inbox.subject}) if inbox is not None else b""
            await send("started", body)
            await self.touch(state)
            result = await self._run(backend, state, request, send, inbox)
        except SandboxerError as exc:
            result = {"error": exc.message}
        except Exception as exc:
            log.exception("exec in %s failed", sandbox_id)
            result = {"error": f"exec failed: {exc}"}
        finally:
            if inbox is not None:
                await inbox.close()
        await self._nc.flush()
        await send("exit", msgspec.json.encode(result))

    async def _open_stdin(self, backend: Extension, sandbox_id: str) -> StdinInbox:
        if not takes_stdin(backend):
            raise Unsupported(
                f"{self._extension.id} cannot give a command standard input (its exec takes "
                "none); run the command without stdin",
                sandbox_id=sandbox_id,
                extension=self._extension.id,
            )
        inbox = StdinInbox(self._nc)
        await inbox.open()
        return inbox

    async def _run(
        self,
        backend: Extension,
        state: SandboxState,
        request: ExecRequest,
        send: OutputSink,
        inbox: StdinInbox | None,
    ) -> dict[str, object]:
        """The command's ``exit`` body: its code, or the timeout that killed it."""
        stdin = {"stdin": inbox.chunks()} if inbox is not None else {}  # only to those taking it
        limit = asyncio.timeout(request.timeout)
        try:
            async with limit:
                code = await backend.exec(
                    state.sandbox_id,
                    request.argv,
                    send,
                    host=state.host,
                    service=request.service,
                    **stdin,
                )
        except TimeoutError:
            if not limit.expired():
                raise
            return {
                "error": f"the command ran past its timeout of {request.timeout:g} s and was "
                "killed",
                "timed_out": True,
            }
        return {"exit_code": code}


def parse_request(data: bytes) -> ExecRequest:
    """The exec request in ``data``, checked; :class:`SandboxerError` says what is wrong."""
    try:
        request = msgspec.json.decode(data, type=ExecRequest)
    except msgspec.DecodeError as exc:
        raise SandboxerError(str(exc)) from None
    if not request.argv or len(data) > MAX_ARGV_BYTES:
        raise SandboxerError("argv must be a non-empty list of strings (under 128 KiB)")
    if any("\x00" in arg for arg in request.argv):
        raise SandboxerError("argv must not contain NUL bytes")
    check_timeout(request.timeout)
    return request
