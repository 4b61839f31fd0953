"""Exec and files over HTTP (docs/http-api.md#exec-and-files).

- ``POST /v1/sandboxes/{id}/exec`` takes ``{"argv": [...], "stdin": BASE64?,
  "timeout": SECONDS?, "service": NAME?}`` and answers once the command is over with
  ``{"exit_code", "stdout", "stderr", "timed_out", ...}``, the output base64-encoded
  (each stream kept up to ``MAX_OUTPUT_BYTES``; ``stdout_truncated`` says when more
  was dropped). A command killed by its timeout answers 200 with ``timed_out: true``,
  ``exit_code: null`` and the output it wrote until then.
- ``PUT /v1/sandboxes/{id}/files?path=P``: the body is the file's bytes (written at
  ``P``), or with ``Content-Type: application/x-tar`` a tar unpacked into the
  directory ``P``; at most ``SANDBOXER_UPLOAD_MAX_MB`` (413 past it).
- ``GET /v1/sandboxes/{id}/files?path=P``: the file's bytes, or for a directory a
  tar of its contents (``Content-Type: application/x-tar``); ``X-Sandboxer-Kind``
  says ``file`` or ``dir``.

A path leaving the workspace (absolute, ``..``, NUL, a symlink leading out) is 400
``path_refused`` with the reason; the routes act as the request's key like every
other (a key of another project gets 404). A key may have at most
``transfers.MAX_KEY_TRANSFERS`` execs and copies running at once on one gateway (429
``transfer_limit`` past it). Copies are inline, as a key's own client makes them: their
bytes ride on the files request's messages, never through the workspaces bucket, so a
copy leaves nothing behind on the bus (the bucket keeps what it is given for a day,
``SANDBOXER_OBJECT_GRACE``, before a collection removes it).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, BinaryIO, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask
from starlette.types import Scope

from sandboxer.client import CommandFailed
from sandboxer.config.settings import Settings
from sandboxer.errors import (
    ExtensionError,
    InvalidInput,
    PathRefused,
    SandboxerError,
    Unsupported,
    WorkspaceRefused,
)
from sandboxer.gateway.auth import visible_sandbox
from sandboxer.gateway.context import (
    KEY_RECHECK_SECONDS,
    BusClient,
    KeyStanding,
    Standing,
    gateway,
    request_actor,
    standing_of,
)
from sandboxer.gateway.errors import error_response, response_for
from sandboxer.gateway.models import SANDBOX_ID, ErrorBody
from sandboxer.gateway.transfers import MAX_KEY_TRANSFERS
from sandboxer.transfer import pack_file
from sandboxer.workspaces.limits import ArchiveLimits

__all__ = ["EXEC_BODY_BYTES", "MAX_OUTPUT_BYTES", "body_limit", "is_transfer", "router"]

EXEC_BODY_BYTES = 12 * 1024 * 1024
"""The largest exec request (its stdin is base64 in the JSON: about 9 MiB of input)."""
MAX_OUTPUT_BYTES = 16 * 1024 * 1024
"""Of each of stdout and stderr, what an exec's answer keeps."""
EXEC_WAIT_SLACK = 30.0
TAR = "application/x-tar"
GONE = frozenset({"destroyed"})
"""Statuses in which no worker holds the sandbox: exec and files answer 409 at once."""

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "a path leaving the workspace (path_refused), or an unsafe archive",
        401: "no API key, or not a valid one (Authorization: Bearer <key>)",
        404: "no such sandbox (or one of another project)",
        409: "the sandbox runs nothing now (paused), or the command could not run",
        413: "the body, or the files, are larger than the limit",
        422: "a field or parameter is invalid",
        429: "the key's rate is reached (rate_limited), or it already has "
        f"{MAX_KEY_TRANSFERS} execs and copies running on this gateway (transfer_limit); "
        "see Retry-After",
        501: "the sandbox's backend cannot do this (no exec, no stdin)",
        502: "the backend failed",
        503: "no worker holds the sandbox, or it stopped, or the service cannot be reached",
    }.items()
}

T = TypeVar("T")

router = APIRouter(prefix="/v1", responses=_ERRORS, dependencies=[Depends(request_actor)])


def is_transfer(scope: Scope) -> bool:
    """Whether the request is an exec or a copy (in or out): what a key may run only so
    many of at once (transfers.py)."""
    path = str(scope.get("path", ""))
    if not path.startswith("/v1/sandboxes/"):
        return False
    method = scope.get("method")
    return (method == "POST" and path.endswith("/exec")) or (
        method in {"PUT", "GET"} and path.endswith("/files")
    )


def body_limit(scope: Scope, default: int) -> int:
    """The body limit of a request: uploads and execs may be larger than other bodies."""
    path = str(scope.get("path", ""))
    if not path.startswith("/v1/sandboxes/"):
        return default
    if scope.get("method") == "PUT" and path.endswith("/files"):
        return Settings.from_env().upload_max_mb * 1024 * 1024
    if scope.get("method") == "POST" and path.endswith("/exec"):
        return EXEC_BODY_BYTES
    return default


async def _visible(
    sandbox_id: Annotated[
        str, PathParam(pattern=SANDBOX_ID, description="8-32 lowercase letters and digits")
    ],
    client: BusClient,
) -> str:
    """The sandbox must be one the view knows (404 otherwise, an administrator's request
    too: no worker would answer for it, and the request would wait for one in vain) and
    not torn down (409)."""
    sandbox = await visible_sandbox(client, sandbox_id)
    if sandbox is None:
        raise HTTPException(404, {"code": "unknown_sandbox", "message": f"no sandbox {sandbox_id}"})
    status = sandbox.get("status")
    if status in GONE:
        raise HTTPException(
            409,
            {
                "code": "not_ready",
                "message": f"sandbox {sandbox_id} is {status}: nothing runs in it any more "
                "(recreate it, or restore a snapshot of it)",
            },
        )
    return sandbox_id


VisibleSandbox = Annotated[str, Depends(_visible)]
FilePath = Annotated[
    str,
    Query(
        min_length=1,
        max_length=4096,
        description="relative to the sandbox's workspace; '.' is the workspace itself",
    ),
]


def _refusal(exc: SandboxerError) -> JSONResponse:
    """What a copy's or an exec's failure answers."""
    if isinstance(exc, PathRefused):
        return error_response(400, exc.code, exc.message)
    if isinstance(exc, WorkspaceRefused):
        # Every size refusal names the setting that bounds it.
        too_large = "SANDBOXER_UPLOAD_MAX_MB" in exc.message
        return error_response(413 if too_large else 400, exc.code, exc.message)
    if isinstance(exc, InvalidInput):
        return error_response(422, exc.code, exc.message)
    if isinstance(exc, Unsupported):
        return error_response(501, exc.code, exc.message)
    if isinstance(exc, ExtensionError):
        return error_response(502, exc.code, exc.message)
    if isinstance(exc, CommandFailed):
        if exc.event.get("type") == "rejected":  # a copy the state refuses: 409 with its code
            return response_for(exc)
        return error_response(409, "exec_failed", exc.message)
    raise exc  # the app's handlers answer the rest (bus errors: 503, config: 500)


# -- exec --------------------------------------------------------------------------------------


async def _receive(
    request: Request, out: BinaryIO, limit: int | None, standing: Callable[[], Awaitable[bool]]
) -> bool:
    """The request's body into ``out``; False, the rest left unread, once its key is found
    revoked: an upload may take minutes and be a GiB, an exec's JSON 12 MiB, which the
    gateway would read and keep for nothing (``standing`` reads the log at most once a
    second). ``limit``: an upload's (an exec's is app.BodyLimit's alone)."""
    total = 0
    async for chunk in request.stream():
        if not await standing():
            return False
        total += len(chunk)
        if limit is not None and total > limit:
            raise WorkspaceRefused(
                f"the body is larger than {limit // (1024 * 1024)} MiB, the most a copy "
                "moves (SANDBOXER_UPLOAD_MAX_MB)"
            )
        out.write(chunk)  # chunks of the ASGI server's size: a page-cache write
    return True


class _Read(Request):
    """A request whose body :class:`_BodyWhileStanding` has read already."""

    def __init__(self, request: Request, body: bytes) -> None:
        super().__init__(request.scope, request.receive)
        self._read = body

    async def body(self) -> bytes:
        return self._read


class _BodyWhileStanding(APIRoute):
    """A route whose body FastAPI parses (an exec's JSON) read first by :func:`_receive`, as
    an upload's is: FastAPI reads a body whole before any dependency runs, so a key revoked
    while 12 MiB of it dripped in would have it all taken in before the route's 401. Its
    key was checked before the body began (app.BodyLimit)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        parse = super().get_route_handler()

        async def read_then_parse(request: Request) -> Response:
            body = io.BytesIO()
            if not await _receive(request, body, None, standing_of(gateway(request), request)):
                return _revoked_before("the command")
            return await parse(_Read(request, body.getvalue()))

        return read_then_parse


class ExecBody(BaseModel, extra="forbid"):
    argv: list[Annotated[str, Field(max_length=65536)]] = Field(min_length=1, max_length=4096)
    stdin: str | None = Field(default=None, description="standard input, base64")
    timeout: float | None = Field(
        default=None, gt=0, le=7 * 24 * 3600, description="seconds before the command is killed"
    )
    service: str | None = Field(default=None, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")


class ExecResult(BaseModel):
    exit_code: int | None
    stdout: str = Field(description="base64")
    stderr: str = Field(description="base64")
    timed_out: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False


async def exec_in_sandbox(
    sandbox_id: VisibleSandbox,
    body: ExecBody,
    client: BusClient,
    request: Request,
    standing: KeyStanding,
) -> Any:
    """Run a command in the sandbox (its standard input from ``stdin``), answer its exit
    code and output once it is over. The command is stopped if the key is revoked or the
    caller hangs up meanwhile."""
    stdin: bytes | None = None
    if body.stdin is not None:
        try:
            stdin = base64.b64decode(body.stdin, validate=True)
        except (binascii.Error, ValueError):
            return error_response(422, "invalid_request", "stdin is not valid base64")
    kept = {"stdout": bytearray(), "stderr": bytearray()}
    dropped = {"stdout": False, "stderr": False}

    def output(stream: str, data: bytes) -> None:
        room = MAX_OUTPUT_BYTES - len(kept[stream])
        kept[stream].extend(data[: max(room, 0)])
        dropped[stream] = dropped[stream] or len(data) > room

    timed_out = False
    code: int | None = None
    wait = (body.timeout or 3600.0) + EXEC_WAIT_SLACK
    running = await _for_caller(
        request,
        standing,
        ("the command", "exec_failed"),
        client.exec(
            sandbox_id,
            body.argv,
            output,
            service=body.service,
            stdin=stdin,
            command_timeout=body.timeout,
            timeout=wait,
        ),
    )
    if isinstance(running, JSONResponse):
        return running
    try:
        code = running.result()
    except CommandFailed as exc:
        if not exc.event.get("timed_out"):
            return _refusal(exc)  # a paused sandbox's 409 is ``frozen``, as for a copy
        timed_out = True
    except SandboxerError as exc:
        return _refusal(exc)
    return ExecResult(
        exit_code=code,
        stdout=base64.b64encode(bytes(kept["stdout"])).decode(),
        stderr=base64.b64encode(bytes(kept["stderr"])).decode(),
        timed_out=timed_out,
        stdout_truncated=dropped["stdout"],
        stderr_truncated=dropped["stderr"],
    )


router.add_api_route(  # router.post with the route class that reads the body (above)
    "/sandboxes/{sandbox_id}/exec",
    exec_in_sandbox,
    methods=["POST"],
    response_model=ExecResult,
    tags=["exec and files"],
    route_class_override=_BodyWhileStanding,
)


async def _for_caller(
    request: Request,
    standing: Standing,
    what: tuple[str, str],
    work: Coroutine[Any, Any, T],
) -> asyncio.Future[T] | JSONResponse:
    """``work`` run to its end (its future, done), or stopped once the request's key is
    revoked (answered 401) or its caller hung up (answered 409, to nobody; ``what``: the
    work's name and that answer's code): a command or a copy running for them would go
    on for nobody (a ``tail -f`` for days, a copy for minutes). Cancelled, the bus client
    leaves its inbox: the worker finds nobody listening at its next check and stops the
    command or the copy.

    The key is read from the log once more before ``work`` starts: it was checked before
    the request's body was read (app.BodyLimit), and a body dripped in over minutes would
    otherwise run a revoked key's command or copy (answered 401, nothing done)."""
    if not await standing(fresh=True):
        work.close()  # never started: nothing was sent
        return _revoked_before(what[0])
    running = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(_caller_gone(request, standing, what[0]))
    try:
        await asyncio.wait([running, stopped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not running.done():
            running.cancel()
        await asyncio.gather(running, stopped, return_exceptions=True)
    if not running.cancelled():
        return running
    why = stopped.result() if stopped.done() and not stopped.cancelled() else "stopped"
    if why.startswith("the API key"):
        return error_response(401, "unauthorized", why)
    return error_response(409, what[1], why)


def _revoked_before(what: str) -> JSONResponse:
    return error_response(
        401,
        "unauthorized",
        f"the API key was revoked before {what} started (the request's body came after its "
        "key was checked); nothing was done: ask an administrator for a new key "
        "('sandboxer keys create')",
    )


async def _caller_gone(request: Request, standing: Callable[[], Awaitable[bool]], what: str) -> str:
    """Return, with why, once the request's key is revoked or its caller has hung up."""
    while True:
        if not await standing():
            return f"the API key was revoked while {what} ran; {what} was stopped"
        if await request.is_disconnected():
            return f"the caller hung up; {what} was stopped"
        await asyncio.sleep(KEY_RECHECK_SECONDS)


# -- files -------------------------------------------------------------------------------------


@router.put(
    "/sandboxes/{sandbox_id}/files",
    tags=["exec and files"],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                TAR: {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
async def put_files(
    sandbox_id: VisibleSandbox,
    path: FilePath,
    request: Request,
    client: BusClient,
    standing: KeyStanding,
) -> Response:
    """Write the body at ``path`` (a file), or unpack it into the directory ``path``
    when it is a tar (``Content-Type: application/x-tar``)."""
    # The copy is stopped if the key is revoked or the caller hangs up meanwhile (_for_caller).
    limit = Settings.from_env().upload_max_mb * 1024 * 1024
    as_tar = request.headers.get("content-type", "").split(";")[0].strip() == TAR
    try:
        with tempfile.TemporaryDirectory(prefix="sandboxer-put-") as scratch:
            body = Path(scratch) / "body"
            with body.open("wb") as out:
                received = await _receive(request, out, limit, standing)
            if not received:
                return _revoked_before("the copy")
            if as_tar:
                kind = "dir"
            else:
                kind, archive = "file", Path(scratch) / "file.tar"
                await asyncio.to_thread(pack_file, body, archive, ArchiveLimits(max_bytes=limit))
                body = archive
            copying = await _for_caller(
                request,
                standing,
                ("the copy", "copy_stopped"),
                client.put_archive(sandbox_id, body, path, kind),
            )
            if isinstance(copying, JSONResponse):
                return copying
            copied = copying.result()
    except SandboxerError as exc:
        return _refusal(exc)
    return JSONResponse({"kind": copied.kind, "path": copied.path, "size": copied.size})


@router.get(
    "/sandboxes/{sandbox_id}/files",
    tags=["exec and files"],
    response_class=Response,
    responses={
        200: {
            "description": "the file's bytes, or a tar of the directory (X-Sandboxer-Kind)",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                TAR: {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
async def get_files(
    sandbox_id: VisibleSandbox,
    path: FilePath,
    request: Request,
    client: BusClient,
    standing: KeyStanding,
) -> Response:
    """A file's bytes, or a tar of a directory's contents."""
    # The copy is stopped if the key is revoked or the caller hangs up meanwhile (_for_caller).
    scratch = await asyncio.to_thread(tempfile.mkdtemp, prefix="sandboxer-get-")
    try:
        fetched = Path(scratch) / "fetched"
        copying = await _for_caller(
            request,
            standing,
            ("the copy", "copy_stopped"),
            client.get_files(sandbox_id, path, fetched, max_mb=Settings.from_env().upload_max_mb),
        )
        if isinstance(copying, JSONResponse):
            await asyncio.to_thread(shutil.rmtree, scratch, True)
            return copying
        copied = copying.result()
    except SandboxerError as exc:
        await asyncio.to_thread(shutil.rmtree, scratch, True)
        return _refusal(exc)
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, scratch, True)
        raise
    media = TAR if copied.kind == "dir" else "application/octet-stream"
    return FileResponse(
        fetched,
        media_type=media,
        headers={"X-Sandboxer-Kind": copied.kind},
        background=BackgroundTask(shutil.rmtree, scratch, True),
    )
