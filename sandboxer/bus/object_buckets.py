"""An Object Store bucket read as the stream it is: its objects' chunks, its metadata
(listed, with each message's stream time and sequence), and the chunks no metadata names.

nats-py's ``ObjectStore`` hides what collecting needs (when an object's metadata was last
written, the chunks of a put killed before its metadata), and its ``get`` reads a 50 MiB
object at 11-16 MiB/s here, slower as objects grow (it adds each chunk to one ``bytes``,
copying all before it), and waits for a chunk that never comes for ever. Reading the
object's chunk subject ``$O.<bucket>.C.<nuid>`` with an ordered consumer runs at about
430 MiB/s. The callers (a workspace's fetch, a checkpoint's read) check what ``get`` would
have: the size, and the SHA-256 against the metadata's (:func:`copy_object`). Two buckets
are read so: the workspaces (``workspaces/stored_objects.py``, the workers' collection) and
the checkpoints (``bus/checkpoint_bucket.py``: the accounts' and the sandbox view's).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import AsyncGenerator, Callable, Iterable
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime

from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, ObjectInfo
from nats.js.errors import NotFoundError

from sandboxer.bus.ask import next_message
from sandboxer.domain.bucket_objects import Stored
from sandboxer.domain.snapshot_objects import owner_of

__all__ = [
    "Copied",
    "bucket_subjects",
    "copy_object",
    "is_chunk_id",
    "list_stored",
    "meta_subject",
    "nats_digest",
    "object_chunks",
    "purge_chunks",
    "stored_from",
    "stray_chunks",
]

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


@dataclass(frozen=True)
class Copied:
    """What :func:`copy_object` handed over."""

    size: int
    """The bytes read: those handed over, and the chunk past the metadata's size that
    stopped the copy, if one did (that one is not handed over)."""
    sha256: str
    """The hex SHA-256 of the bytes handed over."""
    whole: bool
    """Whether they are the object its metadata describes: its size, and its digest."""


async def copy_object(
    js: JetStreamContext,
    bucket: str,
    info: ObjectInfo,
    write: Callable[[bytes], object],
    chunk_timeout: float,
) -> Copied:
    """Hand the object's chunks to ``write``, in order, stopping at the first that goes past
    the size its metadata records. As :func:`object_chunks` raises."""
    size = info.size or 0
    digest = hashlib.sha256()
    received = 0
    async with aclosing(object_chunks(js, bucket, info, chunk_timeout)) as chunks:
        async for data in chunks:
            if received + len(data) > size:
                return Copied(received + len(data), digest.hexdigest(), whole=False)
            received += len(data)
            digest.update(data)
            write(data)
    sha256 = digest.hexdigest()
    return Copied(received, sha256, whole=received == size and info.digest == nats_digest(sha256))


def meta_subject(name: str, *, bucket: str) -> str:
    """The subject of an object's metadata (its name in base64url, as nats-py writes it)."""
    return f"$O.{bucket}.M." + base64.urlsafe_b64encode(name.encode()).decode()


def stored_from(seq: int, written: datetime, data: bytes) -> Stored | None:
    """The live object a metadata message describes (None: deleted, or not ours to read)."""
    try:
        meta = json.loads(data)
    except ValueError:
        return None
    if not isinstance(meta, dict) or meta.get("deleted") or not isinstance(meta.get("name"), str):
        return None
    return Stored(
        name=meta["name"],
        nuid=str(meta.get("nuid") or ""),
        owner=owner_of(meta.get("headers")),
        seq=seq,
        written=written,
    )


async def bucket_subjects(js: JetStreamContext, *, bucket: str) -> dict[str, int] | None:
    """Every subject of the bucket's stream with its message count (None: no bucket): one
    stream info, a subject's name per object and per chunked put, never a message."""
    try:
        info = await js.stream_info(f"OBJ_{bucket}", subjects_filter=f"$O.{bucket}.>")
    except NotFoundError:
        return None
    return dict(info.state.subjects or {})


async def list_stored(
    js: JetStreamContext, present: dict[str, int], *, bucket: str
) -> list[Stored]:
    """Every live object, of the metadata subjects in ``present`` (:func:`bucket_subjects`):
    one ordered read of them, each holding only its last message (every write rolls its
    subject up), the metadata, never the bytes. The count to read is known beforehand: the
    consumer's own pending count reads 0 at times right after it is made (nats-server
    2.15, last-per-subject). An object stored since is not listed: it is too young to go."""
    meta = f"$O.{bucket}.M."
    expected = sum(1 for subject in present if subject.startswith(meta))
    if expected == 0:
        return []
    sub = await js.subscribe(
        meta + ">", ordered_consumer=True, deliver_policy=DeliverPolicy.LAST_PER_SUBJECT
    )
    live: list[Stored] = []
    try:
        for _ in range(expected):
            try:
                msg = await sub.next_msg(timeout=5)
            except NatsTimeout:  # fewer than counted (not done by sandboxer): what came
                break
            found = stored_from(msg.metadata.sequence.stream, msg.metadata.timestamp, msg.data)
            if found is not None:
                live.append(found)
    finally:
        await sub.unsubscribe()
    return live


async def stray_chunks(
    js: JetStreamContext,
    present: dict[str, int],
    live: Iterable[Stored],
    *,
    bucket: str,
) -> dict[str, datetime]:
    """The chunk subjects in ``present`` that no ``live`` object's metadata names, each with
    the time of its last chunk: a put still running writes its chunks before its metadata,
    so the caller keeps what was written lately."""
    chunks = f"$O.{bucket}.C."
    known = {chunks + found.nuid for found in live}
    strays: dict[str, datetime] = {}
    for subject in present:
        if not subject.startswith(chunks) or subject in known:
            continue
        try:
            last = await js.get_last_msg(f"OBJ_{bucket}", subject)
        except NotFoundError:  # purged since the listing
            continue
        if last.time is not None:
            strays[subject] = last.time
    return strays


async def purge_chunks(js: JetStreamContext, subject: str, *, bucket: str) -> None:
    """Remove the chunks on ``subject`` (idempotent: a purge of nothing succeeds)."""
    await js.purge_stream(f"OBJ_{bucket}", subject=subject)
