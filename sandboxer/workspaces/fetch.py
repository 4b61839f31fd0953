"""Fetching an uploaded archive on a worker, with its digest checked against its name.

The chunks are read as :mod:`sandboxer.bus.object_buckets` reads them (nats-py's
``ObjectStore.get`` is slow), and what ``get`` would have checked is checked here:
the size, and the SHA-256, which must equal both the digest in the object's
metadata and the one its name (the input's reference) carries.
"""

from __future__ import annotations

from pathlib import Path

from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.errors import ObjectNotFoundError

from sandboxer import subjects
from sandboxer.bus.object_buckets import copy_object, is_chunk_id
from sandboxer.errors import WorkspaceRefused
from sandboxer.workspaces.bucket import open_bucket
from sandboxer.workspaces.limits import ArchiveLimits
from sandboxer.workspaces.refs import object_name

__all__ = ["fetch_archive"]

CHUNK_TIMEOUT = 30.0
"""Seconds to wait for the next chunk before the fetch is given up."""


async def fetch_archive(
    js: JetStreamContext, sha256_hex: str, destination: Path, limits: ArchiveLimits
) -> int:
    """Write the object named by ``sha256_hex`` to ``destination``; return its size.

    Raises :class:`WorkspaceRefused` when the object is missing, larger than
    the limit, or its bytes do not hash to its name.
    """
    bucket = await open_bucket(js)
    name = object_name(sha256_hex)
    try:
        info = await bucket.get_info(name)
    except ObjectNotFoundError:
        raise WorkspaceRefused(
            f"no uploaded workspace {name} in {subjects.WORKSPACES_BUCKET}; upload the directory "
            "again (the CLI does it when the input is a local directory)"
        ) from None
    size, chunks = info.size or 0, info.chunks or 0
    if size > limits.max_bytes:
        raise WorkspaceRefused(
            f"the uploaded workspace {name} is {size} bytes, more than this worker accepts "
            f"({limits.max_bytes // (1024 * 1024)} MiB, SANDBOXER_UPLOAD_MAX_MB)"
        )
    if not is_chunk_id(info.nuid) and chunks:
        raise WorkspaceRefused(
            f"the uploaded workspace {name} names its chunks {str(info.nuid)[:100]!r}, not a "
            "NUID; upload the directory again"
        )
    with destination.open("wb") as out:
        try:
            # Chunks are 128 KiB: each write a page-cache write, not a stall.
            copied = await copy_object(
                js, subjects.WORKSPACES_BUCKET, info, out.write, CHUNK_TIMEOUT
            )
        except NatsTimeout:
            raise WorkspaceRefused(
                f"the uploaded workspace {name} stopped arriving before its {size} bytes; "
                "its chunks may have been removed"
            ) from None
    if not copied.whole or copied.sha256 != sha256_hex:
        raise WorkspaceRefused(
            f"the uploaded workspace {name} is not the archive its name promises "
            f"({copied.size} bytes hashing to sha256 {copied.sha256[:16]}...); it was altered "
            "or is incomplete. Upload the directory again"
        )
    return size
