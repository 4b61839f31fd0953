"""A bus client's side of exec input and of copies (``sandboxer cp``), used by
:class:`~sandboxer.client.SandboxerClient`
(the HTTP transport's copies out place what they fetch with the same two helpers).

Input reaches a running exec chunk by chunk as requests to the inbox its
``started`` message names (docs/protocol.md#exec). A copy in packs what is
copied into a tar, stores it in the workspaces bucket by its SHA-256 (as a
directory input is) and asks the sandbox's worker to unpack it at a path; a
copy out asks the worker for a path and fetches the object it answers with
(the file's bytes, or a tar of the directory), checked like any archive a
worker unpacks (docs/protocol.md#files). An inline copy (an API key's, which may not
touch the bucket, and the HTTP gateway's) carries its bytes on the request's messages
instead, and leaves nothing in the bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from sandboxer import subjects
from sandboxer.bus.ask import (
    RATE_PATIENCE,
    RateRefusal,
    next_message,
    no_responders,
    paced,
    refused_at_once,
)
from sandboxer.bus.streams import replicas_for
from sandboxer.cleanup_waits import cancel_until_done
from sandboxer.errors import (
    BusError,
    ExtensionError,
    InvalidInput,
    SandboxerError,
    ServiceNotRunning,
    WorkspaceRefused,
)
from sandboxer.exec_protocol.answer_codes import error_for
from sandboxer.exec_protocol.heartbeat import allowed_silence, next_answer
from sandboxer.exec_protocol.wire import FILES_HEADER as HEADER
from sandboxer.exec_protocol.wire import STDIN_HEADER, check_path, files_subject
from sandboxer.workspaces.bucket import open_or_create_bucket
from sandboxer.workspaces.extract import extract_archive
from sandboxer.workspaces.fetch import fetch_archive
from sandboxer.workspaces.limits import ArchiveLimits
from sandboxer.workspaces.pack import FIXED_MTIME, pack_directory
from sandboxer.workspaces.refs import object_name, object_ref, parse_object_ref
from sandboxer.workspaces.stored_objects import touch_stored

__all__ = [
    "Copied",
    "StdinSource",
    "copy_in",
    "copy_out",
    "copy_target",
    "feed_stdin",
    "first_answer",
    "get_object",
    "pack_file",
    "place_copy",
    "put_archive",
]

StdinSource = bytes | AsyncIterable[bytes]
STDIN_CHUNK = 64 * 1024
STDIN_ACK_TIMEOUT = 150.0
"""Seconds one chunk of input may wait for the command to take it (the worker stops an
exec whose input stalls for two minutes)."""
FILES_TIMEOUT = 3600.0
STARTED_TIMEOUT = 5.0


@dataclass(frozen=True)
class Copied:
    """What a copy moved: ``kind`` (file or dir), the sandbox path, bytes, local path."""

    kind: str
    path: str
    size: int
    local: Path | None = None


# -- exec input --------------------------------------------------------------------------------


async def _chunks(source: StdinSource) -> AsyncIterator[bytes]:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        for start in range(0, len(data), STDIN_CHUNK):
            yield data[start : start + STDIN_CHUNK]
        return
    async for block in source:
        for start in range(0, len(block), STDIN_CHUNK):
            yield bytes(block[start : start + STDIN_CHUNK])


async def feed_stdin(nc: Nats, subject: str, source: StdinSource) -> None:
    """Send ``source`` to an exec's input inbox, then its end. A command that exited
    (the inbox has no responder any more) ends the feeding quietly."""
    try:
        async for chunk in _chunks(source):
            await nc.request(
                subject, chunk, timeout=STDIN_ACK_TIMEOUT, headers={STDIN_HEADER: "data"}
            )
        await nc.request(subject, b"", timeout=STDIN_ACK_TIMEOUT, headers={STDIN_HEADER: "end"})
    except NoRespondersError:
        return  # the command is over: what it did not read is dropped, as with a pipe


# -- streamed answers (exec, files) -----------------------------------------------------------


async def first_answer(sub: Subscription, sandbox_id: str, *, serves: str, silent: str) -> Msg:
    """The first message on a streamed request's inbox ``sub``. Raises :class:`BusError`
    (``silent``) when none comes within seconds (no worker holds the sandbox), and
    :class:`ServiceNotRunning` when the server says at once that nothing subscribes to the
    request's subject: no worker of any backend runs (``serves``: what the subject serves)."""
    try:
        msg = await next_message(sub, STARTED_TIMEOUT)
    except NatsTimeout:
        raise BusError(silent, sandbox_id=sandbox_id) from None
    if no_responders(msg):
        raise ServiceNotRunning(
            f"no extension worker is running: nothing serves {serves} on this NATS. Start "
            "the service's workers ('sandboxer up', or 'sandboxer worker EXTENSION' for one "
            "backend)",
            sandbox_id=sandbox_id,
        )
    return msg


# -- copies in ---------------------------------------------------------------------------------


def pack_file(source: Path, archive: Path, limits: ArchiveLimits) -> int:
    """A one-entry tar of the regular file ``source`` (its mode kept, its mtime fixed)."""
    found = source.stat()
    if found.st_size > limits.max_bytes:
        raise WorkspaceRefused(
            f"{source} is larger than {limits.max_bytes // (1024 * 1024)} MiB, the most a copy "
            "moves (SANDBOXER_UPLOAD_MAX_MB)"
        )
    info = tarfile.TarInfo("file")
    info.size = found.st_size
    info.mode = stat.S_IMODE(found.st_mode)
    info.mtime = FIXED_MTIME
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar, source.open("rb") as data:
        tar.addfile(info, data)
    return found.st_size


async def _store(nc: Nats, archive: Path) -> str:
    """Put ``archive`` in the workspaces bucket under its SHA-256 (once); its reference."""

    def digest() -> tuple[str, int]:
        sha = hashlib.sha256()
        with archive.open("rb") as handle:
            while block := handle.read(1024 * 1024):
                sha.update(block)
        return sha.hexdigest(), archive.stat().st_size

    sha, size = await asyncio.to_thread(digest)
    js = nc.jetstream()
    bucket = await open_or_create_bucket(js, replicas_for(nc._server_info))
    name = object_name(sha)
    # Found, it is touched: the collection's grace starts over while the worker fetches it.
    if not await touch_stored(js, name, sha, size):
        with archive.open("rb") as handle:
            await bucket.put(name, handle)
    return object_ref(sha)


async def _ask(
    nc: Nats,
    sandbox_id: str,
    request: dict[str, Any],
    timeout: float = FILES_TIMEOUT,
    key_id: str | None = None,
    patience: float = RATE_PATIENCE,
    upload: Path | None = None,
    download: Path | None = None,
) -> dict[str, Any]:
    """Send a files request, wait for its ``done``; raise the error it carries. ``key_id``:
    asked as that API key (docs/security.md#keys-on-the-bus), sent again while the key's
    rate refuses it, for ``patience`` seconds (:func:`~sandboxer.bus.ask.paced`). An inline request sends ``upload``
    when the worker asks for it, or writes the ``data`` it sends to ``download``
    (workers/inline_files.py)."""
    return await paced(
        lambda: _ask_once(nc, sandbox_id, request, timeout, key_id, upload, download),
        patience,
    )


async def _ask_once(
    nc: Nats,
    sandbox_id: str,
    request: dict[str, Any],
    timeout: float,
    key_id: str | None,
    upload: Path | None,
    download: Path | None,
) -> dict[str, Any] | RateRefusal:
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    feeder: asyncio.Task[None] | None = None
    subject = files_subject(sandbox_id)
    if key_id is not None:
        subject = subjects.stamped(subject, key_id)
    try:
        await nc.publish(subject, msgspec.json.encode(request), reply=inbox)
        msg = await first_answer(
            sub,
            sandbox_id,
            serves=f"file copies ({subject})",
            silent=f"no worker holds sandbox {sandbox_id}: it may not be ready, its backend may "
            "not copy files, or its extension worker is not running ('sandboxer get' shows it)",
        )
        refused = refused_at_once(msg, HEADER, "done")
        if refused is not None:
            return refused
        silence: float | None = None  # no limit until the worker promises heartbeats
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(download.open("wb")) if download is not None else None
            while (kind := (msg.headers or {}).get(HEADER)) != "done":
                if kind == "started":
                    silence = allowed_silence(msg.headers)
                elif kind == "input" and upload is not None and feeder is None:
                    into = str(msgspec.json.decode(msg.data)["stdin"])
                    feeder = asyncio.create_task(feed_stdin(nc, into, _file_chunks(upload)))
                elif kind == "data" and out is not None:
                    await asyncio.to_thread(out.write, msg.data)
                    await msg.respond(b"")  # the worker sends more as these arrive
                # Other kinds (``alive``, its heartbeat) need no answer.
                async with asyncio.timeout(timeout):
                    msg = await next_answer(
                        sub,
                        silence,
                        sandbox_id=sandbox_id,
                        doing="copying files",
                        unknown="Whether the copy was made is unknown: look, and copy again",
                    )
    finally:
        if feeder is not None:
            await cancel_until_done(feeder)
        await sub.unsubscribe()
    answer: dict[str, Any] = msgspec.json.decode(msg.data)
    if not answer.get("ok"):
        raise _error(answer, sandbox_id)
    return answer


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, STDIN_CHUNK):
            yield chunk


def _error(answer: dict[str, Any], sandbox_id: str) -> SandboxerError:
    """The worker's refusal as the error of the tree its code names: any other code
    (``extension``, ``error``, a backend's own) is :class:`ExtensionError`, the backend or the
    worker failed (docs/protocol.md#files)."""
    named = error_for(answer, sandbox_id)
    message = str(answer.get("error"))
    return named if named is not None else ExtensionError(message, sandbox_id=sandbox_id)


async def put_archive(
    nc: Nats,
    sandbox_id: str,
    archive: Path,
    path: str,
    kind: str,
    *,
    service: str | None = None,
    key_id: str | None = None,
    patience: float = RATE_PATIENCE,
    inline: bool = False,
) -> Copied:
    """Store the tar ``archive`` and have it unpacked at ``path`` (``kind``: file, dir).
    With ``inline`` (always for a key), the bytes ride on the request instead: nothing is
    left in the bucket, which keeps what it is given for a day (``SANDBOXER_OBJECT_GRACE``;
    the gateway's copies)."""
    check_path(path, root_allowed=kind == "dir")  # refused here already, before any upload
    request: dict[str, Any] = {"op": "put", "path": path, "kind": kind}
    inline = inline or key_id is not None  # a key may not write the bucket
    if inline:
        request["inline"] = True
    else:
        request["ref"] = await _store(nc, archive)
    if service is not None:
        request["service"] = service
    upload = archive if inline else None
    answer = await _ask(nc, sandbox_id, request, key_id=key_id, patience=patience, upload=upload)
    return Copied(kind=kind, path=str(answer.get("path")), size=int(answer.get("size", 0)))


def _pack_source(source: Path, archive: Path, limits: ArchiveLimits) -> str:
    """Pack ``source`` into ``archive``; its kind (file or dir)."""
    if source.is_dir():
        pack_directory(source, archive, limits=limits)
        return "dir"
    if source.is_file():
        pack_file(source, archive, limits)
        return "file"
    if not source.exists():
        raise InvalidInput(f"{source} does not exist")
    raise InvalidInput(f"{source} is neither a regular file nor a directory")


async def copy_in(
    nc: Nats,
    sandbox_id: str,
    source: Path,
    path: str,
    *,
    limits: ArchiveLimits,
    service: str | None = None,
    key_id: str | None = None,
    patience: float = RATE_PATIENCE,
) -> Copied:
    """Copy the local file or directory ``source`` to ``path`` in the sandbox's workspace
    (a file is written at ``path``; a directory's contents go into the directory ``path``)."""
    with tempfile.TemporaryDirectory(prefix="sandboxer-cp-") as scratch:
        archive = Path(scratch) / "copy.tar"
        kind = await asyncio.to_thread(_pack_source, source, archive, limits)
        copied = await put_archive(
            nc, sandbox_id, archive, path, kind, service=service, key_id=key_id, patience=patience
        )
    return Copied(kind=kind, path=copied.path, size=copied.size, local=source)


# -- copies out --------------------------------------------------------------------------------


async def get_object(
    nc: Nats,
    sandbox_id: str,
    path: str,
    destination: Path,
    *,
    limits: ArchiveLimits,
    service: str | None = None,
    key_id: str | None = None,
    patience: float = RATE_PATIENCE,
    inline: bool = False,
) -> Copied:
    """Write what ``path`` holds to the local file ``destination``: the file's bytes
    (``kind`` file), or a tar of the directory's contents (``kind`` dir). The bytes land
    in scratch and reach ``destination`` once whole and checked: a copy refused, failed or
    cut off leaves what stood there untouched. A regular file (or none) is replaced by a
    rename; a symlink or a device (``/dev/stdout``) is written through, as a plain write
    would (:func:`_land`). With ``inline`` (always for a
    key), the bytes come on the answer rather than through the bucket, where the worker
    would leave them for ever (the gateway's copies)."""
    check_path(path, root_allowed=True)
    request: dict[str, Any] = {"op": "get", "path": path}
    if service is not None:
        request["service"] = service
    # Scratch beside a file to be renamed onto: a rename within one filesystem.
    beside = None if _written_through(destination) else destination.parent
    with tempfile.TemporaryDirectory(prefix=".sandboxer-get-", dir=beside) as scratch:
        partial = Path(scratch) / "partial"
        if not inline and key_id is None:
            answer = await _ask(nc, sandbox_id, request, key_id=key_id)
            sha = parse_object_ref(str(answer.get("ref")))
            size = await fetch_archive(nc.jetstream(), sha, partial, limits)
        else:  # a key may not read the bucket: the bytes come on the answer
            request["inline"] = True
            answer = await _ask(
                nc, sandbox_id, request, key_id=key_id, patience=patience, download=partial
            )
            size = await asyncio.to_thread(_check_download, partial, answer, limits)
        kind = str(answer.get("kind"))
        if kind not in {"file", "dir"}:
            raise BusError(f"the worker answered a copy of {path!r} with kind {kind!r}")
        await asyncio.to_thread(_land, partial, destination)
    return Copied(kind=kind, path=str(answer.get("path")), size=size, local=destination)


def _written_through(destination: Path) -> bool:
    """Whether a download is written into ``destination`` rather than renamed onto it: a
    symlink (its target is what the caller names) or something not a regular file."""
    return destination.is_symlink() or (destination.exists() and not destination.is_file())


def _land(partial: Path, destination: Path) -> None:
    """Move a whole, checked download to ``destination``."""
    if _written_through(destination):
        shutil.copyfile(partial, destination)
    else:
        os.replace(partial, destination)


def _check_download(path: Path, answer: dict[str, Any], limits: ArchiveLimits) -> int:
    """The size of an inline download, once it is the size and SHA-256 the worker sent."""
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise WorkspaceRefused(f"the download is larger than {limits.max_bytes} bytes")
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1024 * 1024):
            sha.update(block)
    if (size, sha.hexdigest()) != (answer.get("size"), answer.get("sha256")):
        raise BusError("the download arrived incomplete or altered (size or SHA-256 differ)")
    return size


def place_copy(fetched: Path, kind: str, target: Path, limits: ArchiveLimits) -> None:
    """Move what was fetched to ``target``: a file, or a directory's tree (merged into an
    existing directory, never through a symlink in it)."""
    if kind == "file":
        if target.is_dir():
            raise InvalidInput(f"{target} is a directory, and what was copied is a file")
        os.replace(fetched, target)
        return
    if target.exists() and not target.is_dir():
        raise InvalidInput(f"{target} is a file, and what was copied is a directory")
    tree = fetched.parent / "tree"
    extract_archive(fetched, tree, limits)
    if target.is_dir():
        clash = _merge_clash(tree, target)
        if clash is not None:
            raise InvalidInput(
                f"{clash}; nothing was copied. Remove it, or copy into a new directory"
            )
        _merge(tree, target)
    else:
        os.replace(tree, target)


def _real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _merge_clash(tree: Path, target: Path) -> str | None:
    """Why ``tree`` cannot merge into ``target``, checked before anything moves.

    A symlink already in ``target`` (left by an earlier copy of the same sandbox, say) is
    never written through: the links of each archive are checked from where they stand in
    it, and one placed through another link would stand elsewhere (``a -> .`` makes
    ``a/a/b/l -> ../../x`` climb out). A link or file lands in place of such a link; a
    directory cannot, and a directory is not replaced by a file.
    """
    for entry in sorted(tree.iterdir()):
        existing = target / entry.name
        if _real_dir(entry):
            if existing.is_symlink():
                return f"{existing} is a symlink, and the copy brings a directory there"
            if existing.is_dir():
                found = _merge_clash(entry, existing)
                if found is not None:
                    return found
            elif existing.exists():
                return f"{existing} is a file, and the copy brings a directory there"
        elif _real_dir(existing):
            return f"{existing} is a directory, and the copy brings a file or symlink there"
    return None


def _merge(tree: Path, target: Path) -> None:
    """Move ``tree``'s entries into ``target`` (``_merge_clash`` found none): renames, which
    replace a file or symlink that stands there rather than write through it."""
    for entry in sorted(tree.iterdir()):
        existing = target / entry.name
        if _real_dir(entry) and _real_dir(existing):
            _merge(entry, existing)
        else:
            os.replace(entry, existing)


def copy_target(local: Path, name: str) -> Path:
    """Where a copy out lands, as ``cp -r`` decides."""
    return local / name if local.is_dir() and name not in ("", ".") else local


async def copy_out(
    nc: Nats,
    sandbox_id: str,
    path: str,
    local: Path,
    *,
    limits: ArchiveLimits,
    service: str | None = None,
    key_id: str | None = None,
    patience: float = RATE_PATIENCE,
) -> Copied:
    """Copy ``path`` of the sandbox's workspace to ``local``, as ``cp -r`` would: into the
    directory ``local`` when it exists (under the path's own name), else as ``local``."""
    name = posixpath.basename(check_path(path, root_allowed=True))
    target = await asyncio.to_thread(copy_target, local, name)
    # Scratch beside the target: the final move is a rename on the same filesystem.
    with tempfile.TemporaryDirectory(prefix=".sandboxer-cp-", dir=target.parent) as scratch:
        fetched = Path(scratch) / "fetched"
        copied = await get_object(
            nc,
            sandbox_id,
            path,
            fetched,
            limits=limits,
            service=service,
            key_id=key_id,
            patience=patience,
        )
        await asyncio.to_thread(place_copy, fetched, copied.kind, target, limits)
    return Copied(kind=copied.kind, path=copied.path, size=copied.size, local=target)
