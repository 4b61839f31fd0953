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

An API key's exec (``sandboxer.exec.<sandbox_id>.<key id>``) is held to the key's rate first
(:mod:`sandboxer.workers.key_reach`): one past it is answered with an ``exit`` carrying
``code`` ``rate_limited`` and ``retry_after``, and nothing runs.

An exec is activity, which holds off idle reaping, for as long as its command runs: the
worker touches the sandbox as it starts and, on a sandbox with an idle limit, once a touch
interval until it ends (:mod:`sandboxer.workers.activity`, shared with file copies).

A paused sandbox (or one being paused or resumed) runs nothing: its processes are frozen,
and a command entering it would freeze too. The worker that owns it answers at once with an
error saying so, rather than staying silent as for a sandbox it cannot reach.

Standard input (``"stdin": true``): the ``started`` message's body is then
``{"stdin": INBOX}``, a subject the worker subscribes to for this exec only. The
client sends each chunk there as a request (header ``Sandboxer-Exec-Stdin: data``)
and the end of input as ``end``; the worker answers each once the chunk is queued
for the command, so a command that reads slowly holds the client back instead of
filling the worker's memory. A client that sends chunks without waiting for those
answers breaks that: past :data:`~.stdin_inbox.STDIN_UNANSWERED` unanswered chunks (or one the
subscription's small buffer had to drop) the command is stopped and the ``exit`` says
why, so the worker never holds more than a few chunks per exec. Input that stops
arriving for ``stdin_inbox.STDIN_IDLE`` seconds stops the command. A backend that cannot stream
input answers an ``exit`` with an ``error`` from :class:`~sandboxer.errors.Unsupported`
saying why.

``"timeout": SECONDS`` bounds the command: past it the backend's call is cancelled,
which kills the command, and the ``exit`` carries ``{"error": ..., "timed_out": true}``.

A client that goes away (Ctrl-C, a dropped connection, a caller that gave up waiting)
stops its command too. Core NATS never tells a publisher that nobody listens, so every
``SANDBOXER_EXEC_HEARTBEAT`` seconds (10 by default) the worker sends a request with the
kind ``alive`` to the reply inbox: the server answers "no responders" only when nothing
subscribes to it any more, and then the backend's call is cancelled. Clients ignore
``alive`` (they may not publish into the worker's inbox anyway): the request times out,
which means the client is still there, so clients that predate ``alive`` are never taken
for gone.

The other way round, ``alive`` is the worker's heartbeat: the ``started`` message says
in its :data:`~sandboxer.exec_protocol.heartbeat.HEADER` header how often one comes, and
a client that hears nothing for a few of them knows the worker is gone (killed, its host
lost) and stops waiting for an ``exit`` that will never come
(:mod:`sandboxer.exec_protocol.heartbeat`; copies do the same).

Files (``sandboxer.files.<sandbox_id>``, :mod:`sandboxer.workers.file_service`) are served
by the same workers, through the same backend exec.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from sandboxer.bus.event_store import EventStore
from sandboxer.bus.in_effect import in_effect
from sandboxer.bus.key_request_rate import KeyRequestRates, refusal_fields
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.errors import RateLimited, SandboxerError, Unsupported
from sandboxer.exec_protocol import answer_codes, heartbeat
from sandboxer.exec_protocol.wire import EXEC_HEADER as HEADER
from sandboxer.extensions.base import Extension, OutputSink
from sandboxer.workers.activity import Activity
from sandboxer.workers.backend_for import backend_for
from sandboxer.workers.in_flight import STOP_GRACE, InFlight
from sandboxer.workers.key_reach import KeyReach, subscriptions
from sandboxer.workers.sandbox_reach import FROZEN, frozen_reason, reachable, takes_stdin
from sandboxer.workers.stdin_inbox import StdinInbox

if TYPE_CHECKING:
    from sandboxer.config.settings import Settings
    from sandboxer.workers.file_service import FileService

__all__ = ["STOP_GRACE", "ExecRequest", "ExecService"]

log = logging.getLogger(__name__)

MAX_ARGV_BYTES = 128 * 1024
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


class ExecService:
    def __init__(
        self,
        nc: Client,
        store: EventStore,
        extension: Extension,
        *,
        settings: Settings | None = None,
        rates: KeyRequestRates | None = None,
    ) -> None:
        """``rates``: the keys' request rates this process holds, shared with its other
        services (bus/key_request_rate.py); a bucket of its own without one."""
        self._nc = nc
        self._store = store
        self._extension = extension
        self._subs: list[Subscription] = []
        self._files: FileService | None = None
        self._heartbeat = heartbeat.INTERVAL if settings is None else settings.exec_heartbeat
        """Seconds between checks that an exec's client still listens on its reply inbox."""
        rates = rates if rates is not None else KeyRequestRates()
        self._reach = KeyReach(store, rates, partial(reachable, store, extension))
        self._activity = Activity(nc, store)
        if settings is not None:  # files in and out ride on exec (docs/protocol.md#files)
            from sandboxer.workers.file_service import FileService

            self._files = FileService(
                nc, store, extension, settings, activity=self._activity, rates=rates
            )
        self._in_flight = InFlight()

    async def start(self) -> None:
        """Return once requests from any connection reach this service (bus/in_effect.py)."""
        queue = "" if self._extension.host_local else f"exec-{self._extension.id}"
        for subject in subscriptions("exec"):  # the client identity's, and API keys'
            self._subs.append(await self._nc.subscribe(subject, queue=queue, cb=self._on_request))
        if self._files is not None:
            # Its wait for its own subscriptions covers these, sent before them: one round
            # trip for both.
            await self._files.start()
        else:
            await in_effect(self._nc)

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        # A command may run for days (``tail -f``), a copy for half an hour: after a short
        # grace, what still runs is cancelled, which kills the commands and copies and tells
        # their clients. Copies and commands get the grace side by side, not one after the
        # other (execs would outlive theirs).
        files = [self._files.stop()] if self._files is not None else []
        await asyncio.gather(self._in_flight.stop(STOP_GRACE), *files)

    async def _on_request(self, msg: Msg) -> None:
        self._in_flight.start(self._serve(msg))

    async def _serve(self, msg: Msg) -> None:
        reached = await self._reach.reach(msg, self._refuse)
        if reached is None:
            return
        state, reply, key_id = reached.state, reached.reply, reached.key_id
        sandbox_id = state.sandbox_id

        async def send(kind: Literal["started", "stdout", "stderr", "exit"], data: bytes) -> None:
            headers: dict[str, str] = {HEADER: kind}
            if kind == "started":  # how often its ``alive`` checks come: see _client_gone
                headers[heartbeat.HEADER] = f"{self._heartbeat:g}"
            # A backend may hand output over whole (Daytona's arrives when the command
            # ends): split, so no message passes the server's max payload.
            step = OUTPUT_CHUNK if kind in ("stdout", "stderr") else len(data)
            for start in range(0, len(data), step or 1):
                await self._nc.publish(reply, data[start : start + step], headers=headers)
            if not data:
                await self._nc.publish(reply, data, headers=headers)

        try:
            request = parse_request(msg.data)
        except SandboxerError as exc:
            await send("exit", _refusal(f"invalid exec request: {exc}", "invalid_input"))
            return
        if state.status in FROZEN:
            await send("exit", _refusal(frozen_reason(state), answer_codes.FROZEN))
            return
        inbox: StdinInbox | None = None
        try:
            backend = await backend_for(self._store, self._extension, state)  # BYOK
            if request.stdin:
                inbox = await self._open_stdin(backend, sandbox_id, key_id)
            body = msgspec.json.encode({"stdin": inbox.subject}) if inbox is not None else b""
            await send("started", body)
            started = time.monotonic()
            async with self._activity.in_use(state):  # a command running is the sandbox used
                result = await self._run(backend, state, request, send, inbox, reply, started)
        except SandboxerError as exc:
            result = {"error": exc.message, "code": exc.code}
        except Exception as exc:
            log.exception("exec in %s failed", sandbox_id)
            result = {"error": f"exec failed: {exc}"}
        except asyncio.CancelledError:
            # The worker is stopping (stop()): the command is killed; say so to the client,
            # which would otherwise wait for an exit until its own timeout.
            with contextlib.suppress(Exception):
                stopped = "the worker stopped; the command was stopped"
                await send("exit", _refusal(stopped, answer_codes.WORKER_STOPPED))
            raise
        finally:
            if inbox is not None:
                await inbox.close()
        await self._nc.flush()
        await send("exit", msgspec.json.encode(result))

    async def _refuse(self, reply: str, limited: RateLimited) -> None:
        """A key's exec past its rate: an ``exit`` saying so, and nothing runs."""
        exit_body = msgspec.json.encode(refusal_fields(limited))
        await self._nc.publish(reply, exit_body, headers={HEADER: "exit"})

    async def _open_stdin(
        self, backend: Extension, sandbox_id: str, key_id: str | None
    ) -> StdinInbox:
        if not takes_stdin(backend):
            raise Unsupported(
                f"{self._extension.id} cannot give a command standard input (its exec takes "
                "none); run the command without stdin",
                sandbox_id=sandbox_id,
                extension=self._extension.id,
            )
        inbox = StdinInbox(self._nc, key_id=key_id)
        await inbox.open()
        return inbox

    async def _run(
        self,
        backend: Extension,
        state: SandboxState,
        request: ExecRequest,
        send: OutputSink,
        inbox: StdinInbox | None,
        reply: str,
        started: float,
    ) -> dict[str, object]:
        """The command's ``exit`` body: its code, or the timeout that killed it. Raises
        :class:`SandboxerError` when the command was stopped for its client."""
        stdin = {"stdin": inbox.chunks()} if inbox is not None else {}  # only to those taking it
        command = asyncio.ensure_future(
            backend.exec(
                state.sandbox_id,
                request.argv,
                send,
                host=state.host,
                service=request.service,
                **stdin,
            )
        )
        # Reasons to stop the command before it ends; each gives the exit's error.
        gone = asyncio.ensure_future(self._client_gone(reply, started))
        stops: list[asyncio.Future[str]] = [gone] if inbox is None else [gone, inbox.broken]
        limit = asyncio.timeout(request.timeout)
        try:
            async with limit:
                watched: list[asyncio.Future[Any]] = [command, *stops]
                await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            if not limit.expired():
                raise
            return {
                "error": f"the command ran past its timeout of {request.timeout:g} s and was "
                "killed",
                "timed_out": True,
            }
        finally:
            # Cancelling the backend's call kills the command (nothing when it has ended):
            # on a timeout, a stop, the worker stopping.
            gone.cancel()
            command.cancel()
            if inbox is not None:  # a flooding client is cut off now, not after the kill
                with contextlib.suppress(NatsError):  # closed again, and reported, by _serve
                    await inbox.close()
            await asyncio.wait([command, gone])
        if command.cancelled():  # one of the stops ended it
            reasons = [stop.result() for stop in stops if stop.done() and not stop.cancelled()]
            raise SandboxerError(reasons[0] if reasons else "the command was stopped")
        return {"exit_code": command.result()}

    async def _client_gone(self, reply: str, started: float) -> str:
        """Return (the exit's error) once nothing subscribes to the exec's reply inbox.

        Each check is also the worker's heartbeat to the client, so they keep the pace the
        ``started`` message (sent at monotonic time ``started``) promised."""
        alive = {HEADER: "alive"}
        await heartbeat.beat(self._nc, reply, alive, started, self._heartbeat)
        return "the client stopped listening for the output; the command was stopped"


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


def _refusal(message: str, code: str) -> bytes:
    """An ``exit`` for a command that did not run, or was stopped: why, and the code a client
    raises its error by (:mod:`.answer_codes`)."""
    return msgspec.json.encode({"error": message, "code": code})
