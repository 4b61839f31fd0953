"""Reading an Object Store object's chunks ourselves, and the digest the store records.

nats-py's ``ObjectStore.get`` reads a 50 MiB object at 11-16 MiB/s here, slower as objects
grow (it adds each chunk to one ``bytes``, copying all before it), and waits for a chunk
that never comes for ever. Reading the object's chunk subject ``$O.<bucket>.C.<nuid>`` with
an ordered consumer runs at about 430 MiB/s. The callers (a workspace's fetch, an account's
checkpoint) check what ``get`` would have: the size, and the SHA-256 against the metadata's.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncGenerator

from nats.js import JetStreamContext
from nats.js.api import ObjectInfo

from sandboxer.bus.ask import next_message

__all__ = ["is_chunk_id", "nats_digest", "object_chunks"]

_NUID = re.compile(r"[A-Za-z0-9]{1,64}")
"""A chunk subject's last token, as nats-py writes it: no dots or wildcards."""


def is_chunk_id(nuid: str | None) -> bool:
    """Whether an object's metadata names its chunks as nats-py does (a subject token)."""
    return _NUID.fullmatch(nuid or "") is not None


def nats_digest(sha256_hex: str) -> str:
    """The digest the Object Store records for content with this SHA-256 (``SHA-256=<b64url>``)."""
    return "SHA-256=" + base64.urlsafe_b64encode(bytes.fromhex(sha256_hex)).decode()


async def object_chunks(
    js: JetStreamContext, bucket: str, info: ObjectInfo, chunk_timeout: float
) -> AsyncGenerator[bytes, None]:
    """Each of the ``info.chunks`` chunks of the object, in order (none for an empty one);
    nats-py's TimeoutError when the next does not come within ``chunk_timeout`` seconds.
    ``info.nuid`` must pass :func:`is_chunk_id`. Close it (``contextlib.aclosing``) when
    stopping early: its consumer ends then."""
    if not info.chunks:
        return
    if not is_chunk_id(info.nuid):
        raise ValueError(f"not a chunk id: {str(info.nuid)[:100]!r}")
    subject = f"$O.{bucket}.C.{info.nuid}"
    sub = await js.subscribe(subject, ordered_consumer=True, pending_bytes_limit=64 << 20)
    try:
        for _ in range(info.chunks):
            yield (await next_message(sub, chunk_timeout)).data
    finally:
        await sub.unsubscribe()
