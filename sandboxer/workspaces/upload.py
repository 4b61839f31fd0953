"""A client's side of a directory input: pack it, store it once by content, return its reference."""

from __future__ import annotations

import asyncio
import io
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from nats.js import JetStreamContext
from nats.js.api import ObjectMeta

from sandboxer.workspaces.bucket import open_or_create_bucket
from sandboxer.workspaces.limits import ArchiveLimits
from sandboxer.workspaces.pack import pack_directory
from sandboxer.workspaces.refs import object_name, object_ref
from sandboxer.workspaces.stored_objects import touch_stored

__all__ = ["UploadProgress", "Uploaded", "upload_directory"]

UploadProgress = Callable[[str, int, int], None]
"""Called with a phase (``packing``, ``uploading``), bytes done and bytes in all (0: unknown)."""


@dataclass(frozen=True)
class Uploaded:
    """What a directory became: the input value to send, and whether bytes were sent."""

    ref: str
    sha256: str
    size: int
    entries: int
    stored: bool
    """False when the bucket already held this content (nothing was sent)."""


class _CountingReader:
    """A file whose reads report progress (nats-py's ``put`` reads it from a thread)."""

    def __init__(self, handle: io.BufferedReader, total: int, progress: UploadProgress) -> None:
        self._handle, self._total, self._progress, self._done = handle, total, progress, 0

    def readinto(self, buffer: bytearray) -> int:
        count = self._handle.readinto(buffer)
        self._done += count
        self._progress("uploading", self._done, self._total)
        return count


async def upload_directory(
    js: JetStreamContext,
    source: Path,
    *,
    replicas: int = 1,
    exclude: Collection[str] = (),
    limits: ArchiveLimits | None = None,
    progress: UploadProgress | None = None,
    workdir: Path | None = None,
    headers: dict[str, list[str]] | None = None,
) -> Uploaded:
    """Pack ``source``, put it in the workspaces bucket unless there already, return its
    reference. The archive is written under ``workdir`` (the system's temporary directory
    by default). ``headers`` go in the object's metadata when this call stores it (a
    snapshot's job marks its objects so: domain/snapshot_objects.py)."""
    limits = limits or ArchiveLimits()
    report = progress or (lambda _phase, _done, _total: None)
    with tempfile.TemporaryDirectory(prefix="sandboxer-upload-", dir=workdir) as scratch:
        packed = await asyncio.to_thread(
            pack_directory,
            source,
            Path(scratch) / "workspace.tar",
            exclude=exclude,
            limits=limits,
            progress=lambda done: report("packing", done, 0),
        )
        bucket = await open_or_create_bucket(js, replicas)
        name = object_name(packed.sha256)
        # Found, it is touched: the collection's grace starts over for this reference.
        present = await touch_stored(js, name, packed.sha256, packed.size)
        if not present:
            with packed.path.open("rb") as handle:
                reader = _CountingReader(handle, packed.size, report)
                # nats-py annotates BufferedIOBase but needs only readinto() (read in a thread).
                meta = ObjectMeta(name=name, headers=headers)
                await bucket.put(name, reader, meta=meta)  # type: ignore[arg-type]
        report("uploaded" if not present else "present", packed.size, packed.size)
    return Uploaded(
        ref=object_ref(packed.sha256),
        sha256=packed.sha256,
        size=packed.size,
        entries=packed.entries,
        stored=not present,
    )
