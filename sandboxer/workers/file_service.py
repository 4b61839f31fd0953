"""Files in and out of sandboxes for bus clients (``sandboxer.files.<sandbox_id>``).

A copy rides on the two things that already exist: the workspaces Object Store
bucket moves the bytes (content-addressed, digest-checked, size-limited), and the
backend's exec moves them into or out of the sandbox, with ``tar`` run *inside* it.
The sandbox itself therefore bounds what a copy can touch: a symlink planted in it
resolves in the sandbox's own view, never the worker's. On top of that, every path
must stay in the workspace (the exec's working directory):

- the path is checked as written: relative, no ``..``, no NUL (:func:`check_path`);
- inside the sandbox, the path (or its deepest existing parent, for an upload) is
  resolved with ``readlink -f`` and must lie in the workspace, so a symlink leading
  out is refused with the reason, exit status 97 (``REFUSED``);
- an upload's archive is unpacked on the worker first, with the checks of
  :mod:`sandboxer.workspaces.extract` (no absolute names, ``..``, links out, devices;
  size and entry limits), then packed again canonically before it enters the sandbox;
  ``tar`` there replaces an existing file or symlink rather than writing through it;
- a download's archive from the sandbox is held to the same checks and limits
  before the client gets it.

A copy is activity, as an exec is, for as long as it runs (:mod:`sandboxer.workers.activity`):
one longer than the sandbox's idle limit does not have it reaped under it.

A copy is staged on the worker under ``staging/files/<nuid>-<pid>``; each step
removes what the next no longer needs (an upload and its tree together can be
twice ``SANDBOXER_UPLOAD_MAX_MB``), and a starting service removes what
workers no longer running left there (:mod:`sandboxer.scratch`).

While a copy runs, the worker sends ``alive`` checks to the reply inbox, as exec does:
its heartbeat (:mod:`sandboxer.exec_protocol.heartbeat`), so a client learns within seconds
that a killed worker will send no ``done``; and, as for exec, a check that finds nobody
listening any more (the client killed, or hung up) stops the copy. A stopping worker
gives copies the grace execs get, then cancels them (:mod:`sandboxer.workers.in_flight`):
a cancelled copy answers ``done`` saying so. Stopped either way, a copy leaves nothing
behind: not its staging, nor chunks of a result half-stored in the bucket. An upload
enters the sandbox as a whole file first (beside where it goes) and is unpacked only
once all of it is there, so stopping it while it arrives leaves no half-written file;
once unpacking began, it is let finish (for :data:`PLACE_TIMEOUT` at most).

Requests: ``{"op": "put", "path": P, "kind": "file"|"dir", "ref": "object:sha256:.."}``
(the ``ref`` an uploaded tar: for ``file``, one regular file, written at ``P``; for
``dir``, a tree unpacked into the directory ``P``, made when missing), or
``{"op": "get", "path": P}`` (answered with ``kind`` and the ``ref`` of the file's
bytes, or of a tar of the directory). ``service`` picks a compose sandbox's container,
as for exec. Answers go to the reply inbox like exec's: ``Sandboxer-Files: started``,
then ``done`` with ``{"ok": true, ...}`` or ``{"ok": false, "error": ..., "code": ...}``.
An API key's copy past the key's rate is answered with a ``done`` alone, ``code``
``rate_limited`` and ``retry_after`` (:mod:`sandboxer.workers.key_reach`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import posixpath
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.object_store import ObjectStore
from nats.nuid import NUID

from sandboxer.bus.event_store import EventStore
from sandboxer.bus.in_effect import in_effect
from sandboxer.bus.key_request_rate import KeyRequestRates, refusal_fields
from sandboxer.bus.streams import replicas_for
from sandboxer.cleanup_waits import settle
from sandboxer.config.settings import Settings
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.errors import (
    ExtensionError,
    InvalidInput,
    PathRefused,
    RateLimited,
    SandboxerError,
    Unsupported,
    WorkspaceRefused,
)
from sandboxer.exec_protocol import heartbeat
from sandboxer.exec_protocol.wire import FILES_HEADER as HEADER
from sandboxer.exec_protocol.wire import (
    FILES_PREFIX,
    MAX_PATH_CHARS,
    check_path,
    files_subject,
)
from sandboxer.extensions.base import Extension
from sandboxer.scratch import pid_scratch, sweep_dead
from sandboxer.workers.activity import Activity
from sandboxer.workers.backend_for import backend_for
from sandboxer.workers.in_flight import STOP_GRACE, InFlight
from sandboxer.workers.inline_files import receive_inline, send_inline
from sandboxer.workers.key_reach import KeyReach, subscriptions
from sandboxer.workers.sandbox_reach import FROZEN, frozen_reason, reachable, takes_stdin
from sandboxer.workspaces.bucket import open_or_create_bucket
from sandboxer.workspaces.extract import extract_archive
from sandboxer.workspaces.fetch import fetch_archive
from sandboxer.workspaces.limits import ArchiveLimits
from sandboxer.workspaces.pack import pack_directory
from sandboxer.workspaces.refs import object_name, object_ref, parse_object_ref
from sandboxer.workspaces.stored_objects import touch_stored

__all__ = [
    "FILES_PREFIX",
    "HEADER",
    "MAX_PATH_CHARS",
    "FileRequest",
    "FileService",
    "check_path",
    "files_subject",
]

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 16 * 1024
REFUSED = 97
"""Exit status of the in-sandbox scripts when a path leaves the workspace (reason on stderr)."""
FILE_TIMEOUT = 1800.0
"""Seconds a copy may take inside the sandbox."""
CHUNK = 64 * 1024
STDERR_KEPT = 4096
PLACE_TIMEOUT = 15.0
"""Seconds a stopping worker lets an upload whose bytes are all in the sandbox finish
unpacking there, rather than leave it half-written."""
CLEAN_TIMEOUT = 10.0
"""Seconds a stopping worker spends removing a stopped upload's file from the sandbox."""
STAGE_PREFIX = ".sandboxer-cp-"
"""Name of an upload's file in the sandbox (with a random part) until it is unpacked."""
STOPPED = "the worker stopped; the copy was stopped, and nothing of it was left in the sandbox"


class FileRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    op: Literal["put", "get"]
    path: str
    kind: Literal["file", "dir"] | None = None
    """put: what ``ref`` holds and ``path`` names (a file, or a directory to unpack into)."""
    ref: str | None = None
    """put: the uploaded tar, ``object:sha256:<hex>`` in the workspaces bucket."""
    service: str | None = None
    """Compose sandboxes: the service whose container holds the files (the first by default)."""
    inline: bool = False
    """The bytes ride on this request's messages, not the bucket (what API keys use:
    :mod:`sandboxer.workers.inline_files`)."""


_PRELUDE = r"""
set -u
root=$(pwd -P) || exit 96
# ${root%/}: a workspace of / (a container's default working directory) holds every path
refuse() { printf 'sandboxer-refused: %s\n' "$1" >&2; exit 97; }
inside() {
  r=$(readlink -f -- "$1") || return 1
  case "$r" in "$root"|"${root%/}"/*) return 0;; esac
  return 1
}
"""

GET_SCRIPT = (
    _PRELUDE
    + r"""
p=$1
if [ ! -e "$p" ]; then
  if [ -L "$p" ]; then refuse "$p is a symlink to nothing"; fi
  refuse "$p does not exist in the workspace"
fi
inside "$p" || refuse "$p leads out of the workspace (through a symlink)"
r=$(readlink -f -- "$p")
[ -f "$r" ] || [ -d "$r" ] || refuse "$p is not a regular file or a directory"
cd -- "$(dirname -- "$r")" || exit 96
exec tar -cf - -- "$(basename -- "$r")"
"""
)
"""``sh -c GET_SCRIPT sh ./PATH``: a tar of the file or directory (one top entry) on stdout."""

PUT_SCRIPT = (
    _PRELUDE
    + r"""
# Refused before the input is in, it is read to its end first: podman drops the output of
# an exec that exits while its input is still arriving, the reason included.
drain() { cat >/dev/null 2>&1; }
d=$1
f=$2
e=$d
while [ ! -e "$e" ] && [ ! -L "$e" ]; do e=$(dirname -- "$e"); done
[ -e "$e" ] || { drain; refuse "$e is a symlink to nothing"; }
inside "$e" || { drain; refuse "$e leads out of the workspace (through a symlink)"; }
# The whole tar is in the sandbox before anything is written where it goes: a copy stopped
# while it arrives leaves only this file (the worker removes it: CLEAN_SCRIPT).
s=$(cd -- "$e" && pwd -P)/$3 || { drain; exit 96; }
trap 'rm -f -- "$s"' EXIT
(set -C; cat >"$s") || exit 96
mkdir -p -- "$d" || exit 96
inside "$d" || refuse "$d leads out of the workspace (through a symlink)"
[ -d "$d" ] || refuse "$d is not a directory"
cd -- "$d" || exit 96
if [ -n "$f" ] && [ -d "$f" ] && [ ! -L "$f" ]; then
  refuse "$d/$f is a directory; name the file to write, or copy a directory"
fi
tar -xof "$s"
"""
)
"""``sh -c PUT_SCRIPT sh ./DIR NAME STAGE``: unpack stdin's tar into DIR (NAME: the one
file, or empty), taking it in whole first as the file STAGE beside DIR's deepest
existing part."""

CLEAN_SCRIPT = r"""
p=$1
while :; do
  rm -f -- "$p/$2"
  [ "$p" != . ] || exit 0
  p=$(dirname -- "$p")
done
"""
"""``sh -c CLEAN_SCRIPT sh ./DIR STAGE``: remove a stopped upload's STAGE file, from wherever
between DIR and the workspace it was taken in (DIR may have been made since)."""


class FileService:
    """Answers ``sandboxer.files.*`` for the sandboxes of one backend (like exec)."""

    def __init__(
        self,
        nc: Client,
        store: EventStore,
        extension: Extension,
        settings: Settings,
        *,
        activity: Activity | None = None,
        rates: KeyRequestRates | None = None,
    ) -> None:
        """``activity``: the touches of the process's execs (a copy is the sandbox in use as
        an exec is); ``rates``: the keys' request rates this process holds (exec's: a copy
        and an exec of a key take from one bucket, bus/key_request_rate.py)."""
        self._nc = nc
        self._store = store
        self._extension = extension
        rates = rates if rates is not None else KeyRequestRates()
        self._reach = KeyReach(store, rates, partial(reachable, store, extension))
        self._limits = ArchiveLimits.from_mb(settings.upload_max_mb)
        self._inline_deadline = settings.inline_upload_deadline
        """Seconds an inline upload may take to arrive (None: from the limit, inline_files.py)."""
        self._staging = settings.staging_root / "files"
        self._heartbeat = settings.exec_heartbeat
        """Seconds between the ``alive`` checks (heartbeats) a copy's client gets."""
        self._activity = activity
        self._subs: list[Subscription] = []
        self._in_flight = InFlight()
        self._nuid = NUID()

    async def start(self) -> None:
        """Return once requests from any connection reach this service (bus/in_effect.py)."""
        # A worker killed mid-copy (kill -9, a reboot) never ran its clean-up: its staging
        # can be gigabytes, and nothing else would ever remove it.
        await asyncio.to_thread(sweep_dead, self._staging)
        queue = "" if self._extension.host_local else f"files-{self._extension.id}"
        for subject in subscriptions("files"):  # the client identity's, and API keys'
            self._subs.append(await self._nc.subscribe(subject, queue=queue, cb=self._on_request))
        await in_effect(self._nc)

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        # A copy may take half an hour (FILE_TIMEOUT): the grace execs get, then cancelled.
        await self._in_flight.stop(STOP_GRACE)

    async def _on_request(self, msg: Msg) -> None:
        self._in_flight.start(self._serve(msg))

    async def _refuse(self, reply: str, limited: RateLimited) -> None:
        """A key's copy past its rate: a ``done`` saying so, and nothing is copied."""
        done = msgspec.json.encode({"ok": False, **refusal_fields(limited)})
        await self._nc.publish(reply, done, headers={HEADER: "done"})

    async def _serve(self, msg: Msg) -> None:
        reached = await self._reach.reach(msg, self._refuse)
        if reached is None:
            return
        state, reply, key_id = reached.state, reached.reply, reached.key_id
        sandbox_id = state.sandbox_id

        async def send(kind: str, body: dict[str, Any] | None = None) -> None:
            data = msgspec.json.encode(body) if body is not None else b""
            headers = {HEADER: kind}
            if kind == "started":  # how often its ``alive`` checks come (heartbeat.py)
                headers[heartbeat.HEADER] = f"{self._heartbeat:g}"
            await self._nc.publish(reply, data, headers=headers)

        await send("started")
        if state.status in FROZEN:
            await send("done", {"ok": False, "error": frozen_reason(state), "code": "frozen"})
            return
        # The ``alive`` checks are the client's heartbeat, and tell when nobody listens any
        # more (Ctrl-C, a caller hanging up, a killed process): as for exec, the copy is then
        # stopped, or a large one would go on for minutes, filling staging and the bucket for
        # nobody. Stopped, it leaves nothing (as when the worker stops).
        alive = {HEADER: "alive"}
        beat = heartbeat.beat(self._nc, reply, alive, time.monotonic(), self._heartbeat)
        beating = asyncio.ensure_future(beat)
        copying = asyncio.ensure_future(self._copy(msg.data, state, key_id, reply, send))
        try:
            await asyncio.wait([copying, beating], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # The worker is stopping (stop()): say so now, or the client waits for a done
            # until it hears no more heartbeats.
            await settle(copying, 0)
            with contextlib.suppress(Exception):
                await send("done", {"ok": False, "error": STOPPED, "code": "worker_stopped"})
            raise
        finally:
            beating.cancel()
        if not copying.done():  # nobody to answer
            log.info("copy for %s stopped: %s", sandbox_id, beating.result())
            await settle(copying, 0)
            return
        await self._nc.flush()
        await send("done", copying.result())

    async def _copy(
        self,
        data: bytes,
        state: SandboxState,
        key_id: str | None,
        reply: str,
        send: Callable[[str, dict[str, Any] | None], Awaitable[None]],
    ) -> dict[str, Any]:
        """The ``done`` body of the copy ``data`` asks for; its staging removed."""
        staging: Path | None = None
        try:
            request = self._parse(data)
            # Activity for as long as it runs, not only as it starts: a copy longer than
            # the idle limit would have the sandbox reaped under it.
            async with self._in_use(state):
                backend = await backend_for(self._store, self._extension, state)  # BYOK
                staging = await asyncio.to_thread(
                    pid_scratch, self._staging, self._nuid.next().decode()
                )
                if request.op == "put":
                    answer = await self._put(backend, state, request, staging, send, key_id)
                else:
                    answer = await self._get(backend, state, request, staging, reply)
            answer["ok"] = True
        except SandboxerError as exc:
            answer = {"ok": False, "error": exc.message, "code": exc.code}
        except Exception as exc:
            log.exception("copy for %s failed", state.sandbox_id)
            answer = {"ok": False, "error": f"the copy failed: {exc}", "code": "error"}
        finally:
            if staging is not None:  # cancelled too: a stopping worker leaves none
                await asyncio.to_thread(shutil.rmtree, staging, True)
        return answer

    def _in_use(self, state: SandboxState) -> contextlib.AbstractAsyncContextManager[None]:
        if self._activity is None:
            return contextlib.nullcontext()
        return self._activity.in_use(state)

    def _parse(self, data: bytes) -> FileRequest:
        if len(data) > MAX_REQUEST_BYTES:
            raise InvalidInput("the files request is larger than 16 KiB")
        try:
            request = msgspec.json.decode(data, type=FileRequest)
        except msgspec.DecodeError as exc:
            raise InvalidInput(f"invalid files request: {exc}") from None
        if request.op == "put" and (
            request.kind is None or (request.ref is None) != request.inline
        ):
            raise InvalidInput(
                "a put names its kind (file or dir) and either the ref of its upload or inline"
            )
        if request.op == "get" and (request.kind is not None or request.ref is not None):
            raise InvalidInput("a get takes only a path (and a service)")
        return request

    # -- put ----------------------------------------------------------------------------------

    async def _put(
        self,
        backend: Extension,
        state: SandboxState,
        request: FileRequest,
        staging: Path,
        send: Callable[[str, dict[str, Any] | None], Awaitable[None]],
        key_id: str | None,
    ) -> dict[str, Any]:
        path = check_path(request.path, root_allowed=request.kind == "dir")
        sha = None if request.inline else parse_object_ref(request.ref or "")
        if not takes_stdin(backend):
            raise Unsupported(
                f"{self._extension.id} cannot take files in: its exec takes no standard input",
                sandbox_id=state.sandbox_id,
                extension=self._extension.id,
            )
        archive = staging / "upload.tar"
        if sha is None:
            await receive_inline(
                self._nc,
                send,
                archive,
                self._limits.max_bytes,
                key_id=key_id,
                deadline=self._inline_deadline,
            )
        else:
            await fetch_archive(self._nc.jetstream(), sha, archive, self._limits)
        tree = staging / "tree"
        entries = await asyncio.to_thread(extract_archive, archive, tree, self._limits)
        archive.unlink()  # unpacked: its bytes are in the tree now
        if request.kind == "file":
            directory, name = posixpath.split(path)
            source = await asyncio.to_thread(_single_file, tree, staging / "one", name)
        else:
            directory, name, source = path, "", tree
        packed = await asyncio.to_thread(
            pack_directory, source, staging / "in.tar", limits=self._limits
        )
        # Only in.tar is sent from here on, and the copy into the sandbox can take minutes.
        await asyncio.to_thread(shutil.rmtree, source)
        stage = f"{STAGE_PREFIX}{self._nuid.next().decode()}.tar"
        argv = ["sh", "-c", PUT_SCRIPT, "sh", directory or ".", name, stage]
        sent = asyncio.Event()  # every byte handed to the sandbox: what is left is unpacking

        async def upload() -> AsyncIterator[bytes]:
            async for chunk in _read_file(packed.path):
                yield chunk
            sent.set()

        writing = asyncio.ensure_future(self._exec(backend, state, request, argv, upload()))
        try:
            code, errors = await asyncio.shield(writing)
        except asyncio.CancelledError:
            await self._stop_put(writing, sent, backend, state, request, directory or ".", stage)
            raise
        self._check_exit(code, errors, state, "writing the files into the sandbox")
        return {
            "kind": request.kind,
            "path": path[2:] or ".",
            "entries": entries,
            "size": packed.size,
        }

    async def _stop_put(
        self,
        writing: asyncio.Future[tuple[int, bytes]],
        sent: asyncio.Event,
        backend: Extension,
        state: SandboxState,
        request: FileRequest,
        directory: str,
        stage: str,
    ) -> None:
        """End an upload the worker's stop cancelled, leaving nothing half-written: one
        already unpacking in the sandbox is let finish; one still arriving is killed, and
        what arrived of it removed."""
        # Waits by settle(), not asyncio.timeout: this runs while the task is being cancelled
        # (cleanup_waits.py).
        # Past its ``writing`` is cancelled, which kills the sandbox's side when it still runs.
        await settle(writing, PLACE_TIMEOUT if sent.is_set() else 0)
        argv = ["sh", "-c", CLEAN_SCRIPT, "sh", directory, stage]
        cleaning = asyncio.ensure_future(self._exec(backend, state, request, argv, None))
        await settle(cleaning, CLEAN_TIMEOUT)
        if cleaning.cancelled() or cleaning.exception() is not None:
            why = "timed out" if cleaning.cancelled() else repr(cleaning.exception())
            log.warning("could not remove %s from %s: %s", stage, state.sandbox_id, why)

    # -- get ----------------------------------------------------------------------------------

    async def _get(
        self,
        backend: Extension,
        state: SandboxState,
        request: FileRequest,
        staging: Path,
        reply: str,
    ) -> dict[str, Any]:
        path = check_path(request.path, root_allowed=True)
        raw = staging / "out.tar"
        limit = self._limits.max_bytes
        with raw.open("wb") as out:
            received = 0

            async def collect(data: bytes) -> None:
                nonlocal received
                received += len(data)
                if received > limit:
                    raise WorkspaceRefused(
                        f"{path} is larger than {limit // (1024 * 1024)} MiB, the most a copy "
                        "moves (SANDBOXER_UPLOAD_MAX_MB)"
                    )
                out.write(data)

            argv = ["sh", "-c", GET_SCRIPT, "sh", path]
            code, errors = await self._exec(backend, state, request, argv, None, collect)
        self._check_exit(code, errors, state, "reading the files from the sandbox")
        tree = staging / "tree"
        await asyncio.to_thread(extract_archive, raw, tree, self._limits)
        raw.unlink()  # unpacked: its bytes are in the tree now
        kind, result = await asyncio.to_thread(_canonical, tree, staging, self._limits)
        sha, size = await asyncio.to_thread(_sha256, result)
        if request.inline:
            await send_inline(self._nc, reply, result, HEADER)
            return {"kind": kind, "path": path[2:] or ".", "sha256": sha, "size": size}
        js = self._nc.jetstream()
        bucket = await open_or_create_bucket(js, replicas_for(self._nc._server_info))
        name = object_name(sha)
        # Found, it is touched: the collection's grace starts over while the client fetches it.
        if not await touch_stored(js, name, sha, size):
            with result.open("rb") as handle:
                await _store_object(bucket, name, handle)
        return {"kind": kind, "path": path[2:] or ".", "ref": object_ref(sha), "size": size}

    # -- running the scripts ------------------------------------------------------------------

    async def _exec(
        self,
        backend: Extension,
        state: SandboxState,
        request: FileRequest,
        argv: list[str],
        stdin: AsyncIterator[bytes] | None,
        stdout: Callable[[bytes], Awaitable[None]] | None = None,
    ) -> tuple[int, bytes]:
        errors = bytearray()

        async def output(stream: Literal["stdout", "stderr"], data: bytes) -> None:
            if stream == "stderr":
                errors.extend(data)
                del errors[: max(0, len(errors) - STDERR_KEPT)]
            elif stdout is not None:
                await stdout(data)

        async with asyncio.timeout(FILE_TIMEOUT):
            if stdin is not None:
                code = await backend.exec(
                    state.sandbox_id,
                    argv,
                    output,
                    host=state.host,
                    service=request.service,
                    stdin=stdin,
                )
            else:
                code = await backend.exec(
                    state.sandbox_id, argv, output, host=state.host, service=request.service
                )
        return code, bytes(errors)

    def _check_exit(self, code: int, errors: bytes, state: SandboxState, what: str) -> None:
        text = errors.decode(errors="replace")
        for line in text.splitlines():
            if code == REFUSED and line.startswith("sandboxer-refused: "):
                raise PathRefused(
                    line.removeprefix("sandboxer-refused: ").strip(), sandbox_id=state.sandbox_id
                )
        if code != 0:
            raise ExtensionError(
                f"{what} failed (exit {code}): {text.strip()[-1000:] or 'no output'}; the "
                "sandbox needs sh, readlink and tar for copies",
                sandbox_id=state.sandbox_id,
                extension=self._extension.id,
            )


class _StoppableReader:
    """A file whose next read fails once :attr:`stopped`: nats-py's ``put`` removes the
    chunks it stored when a read fails (not when it is cancelled, which leaves them, with
    no name, in the bucket for good)."""

    def __init__(self, handle: io.BufferedReader) -> None:
        self._handle = handle
        self.stopped = False

    def readinto(self, buffer: bytearray) -> int:
        if self.stopped:
            raise SandboxerError("the copy was stopped")
        return self._handle.readinto(buffer)


async def _store_object(bucket: ObjectStore, name: str, handle: io.BufferedReader) -> None:
    """Put ``handle`` in ``bucket`` as ``name``; stopped (cancelled), it leaves no chunks."""
    reader = _StoppableReader(handle)
    storing = asyncio.ensure_future(bucket.put(name, reader))  # type: ignore[arg-type]
    try:
        await asyncio.shield(storing)
    except asyncio.CancelledError:
        reader.stopped = True  # the next read fails, and nats-py purges what it stored
        await settle(storing, CLEAN_TIMEOUT)
        raise


def _single_file(tree: Path, destination: Path, name: str) -> Path:
    """The directory ``destination`` holding the upload's one regular file as ``name``."""
    found = list(tree.iterdir())
    if len(found) != 1 or found[0].is_symlink() or not found[0].is_file():
        raise WorkspaceRefused(
            "a file upload's archive must hold exactly one regular file (send a directory "
            "with kind dir)"
        )
    destination.mkdir()
    found[0].rename(destination / name)
    return destination


def _canonical(tree: Path, staging: Path, limits: ArchiveLimits) -> tuple[str, Path]:
    """What the client gets: the file's bytes, or a canonical tar of the directory."""
    found = list(tree.iterdir())
    if len(found) != 1:
        raise WorkspaceRefused("the sandbox's tar held more than the one path asked for")
    top = found[0]
    if top.is_symlink():
        raise PathRefused(f"{top.name} is a symlink; copy what it points to")
    if top.is_file():
        return "file", top
    packed = pack_directory(top, staging / "dir.tar", limits=limits)
    return "dir", packed.path


def _sha256(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest(), path.stat().st_size


async def _read_file(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, CHUNK):
            yield chunk
