"""Fetching an uploaded archive on a worker, with its digest checked against its name.

nats-py's ``ObjectStore.get`` reads a 50 MiB object at 11-16 MiB/s here (and
slower as objects grow); reading the object's chunk subject
``$O.<bucket>.C.<nuid>`` with an ordered consumer runs at about 430 MiB/s,
so this reads the chunks itself and checks what ``get`` would have: the
chunk count, the size, and the SHA-256, which must equal both the digest in
the object's metadata and the one its name (the input's reference) carries.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.errors import ObjectNotFoundError

from sandboxer import subjects
from sandboxer.bus.ask import next_message
from sandboxer.errors import WorkspaceRefused
from sandboxer.workspaces.bucket import open_bucket
from sandboxer.workspaces.limits import ArchiveLimits
from sandboxer.workspaces.refs import nats_digest, object_name

__all__ = ["fetch_archive"]

_NUID = re.compile(r"[A-Za-z0-9]{1,64}")
"""A chunk subject's last token, as nats-py writes it: no dots or wildcards from a client."""

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
    digest = hashlib.sha256()
    received = 0
    if chunks and _NUID.fullmatch(info.nuid or "") is None:
        raise WorkspaceRefused(
            f"the uploaded workspace {name} names its chunks {str(info.nuid)[:100]!r}, not a "
            "NUID; upload the directory again"
        )
    if chunks:
        subject = f"$O.{subjects.WORKSPACES_BUCKET}.C.{info.nuid}"
        sub = await js.subscribe(subject, ordered_consumer=True, pending_bytes_limit=64 << 20)
        try:
            with destination.open("wb") as out:
                for _ in range(chunks):
                    try:
                        msg = await next_message(sub, CHUNK_TIMEOUT)
                    except NatsTimeout:
                        raise WorkspaceRefused(
                            f"the uploaded workspace {name} stopped arriving after {received} of "
                            f"{size} bytes; its chunks may have been removed"
                        ) from None
                    received += len(msg.data)
                    if received > size:
                        break
                    digest.update(msg.data)
                    out.write(msg.data)  # chunks are 128 KiB: a page-cache write, not a stall
        finally:
            await sub.unsubscribe()
    sha = digest.digest()
    if received != size or sha.hex() != sha256_hex or info.digest != nats_digest(sha.hex()):
        raise WorkspaceRefused(
            f"the uploaded workspace {name} is not the archive its name promises ({received} "
            f"bytes hashing to sha256 {sha.hex()[:16]}...); it was altered or is incomplete. "
            "Upload the directory again"
        )
    return size
