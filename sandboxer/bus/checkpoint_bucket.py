"""The checkpoints bucket (``SANDBOXER_CHECKPOINTS``): folds of the log stored beside it.

Two kinds live there: each long account's book (:mod:`sandboxer.bus.checkpoints`) and the
projector's sandbox view (:mod:`sandboxer.bus.view_checkpoints`). Both only save time, and
both are trusted only as the fold they say they are: of this code, and of this log, which
must still hold, at the sequence a checkpoint names, the very event it was folded up to
(:func:`event_digest`). So a failure to read one is never an error, only a longer fold.

Only the service identity may read or write the bucket (docs/security.md): whoever could
write a checkpoint could set a project's balance, or what the view says of any sandbox.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import ObjectInfo, ObjectStoreConfig, StorageType
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.object_store import ObjectStore

from sandboxer import subjects
from sandboxer.bus.account_checkpoint import message_digest
from sandboxer.bus.object_buckets import (
    bucket_subjects,
    copy_object,
    list_stored,
    meta_subject,
    purge_chunks,
    stray_chunks,
)
from sandboxer.domain.bucket_objects import Stored, stale_chunks

__all__ = [
    "CHUNK_TIMEOUT",
    "STRAY_GRACE",
    "event_digest",
    "list_checkpoints",
    "open_checkpoint_bucket",
    "read_checkpoint",
    "stored_info",
]

log = logging.getLogger(__name__)

BUCKET = subjects.CHECKPOINTS_BUCKET
STRAY_GRACE = 3600.0
"""Seconds a chunk no checkpoint names stays: far longer than any write of one takes."""
META_TIMEOUT = 2.0
"""Seconds a checkpoint's metadata may take before the load folds from sequence 1."""
CHUNK_TIMEOUT = 2.0
"""Seconds a checkpoint's next chunk may take before the load folds from sequence 1."""


async def open_checkpoint_bucket(
    js: JetStreamContext, replicas: int, *, stray_grace: float = STRAY_GRACE
) -> ObjectStore:
    """The bucket, created with ``replicas`` (like the streams) when it is not there; the
    chunks of writes killed before their metadata, older than ``stray_grace`` seconds,
    purged."""
    try:
        bucket = await js.object_store(BUCKET)
    except BucketNotFoundError:
        config = ObjectStoreConfig(
            description="sandboxer: checkpoints, folds of the log to start from",
            storage=StorageType.FILE,
            replicas=replicas,
        )
        # Several roles may start at once; creating it with an identical config succeeds.
        bucket = await js.create_object_store(BUCKET, config=config)
    await _purge_strays(js, stray_grace)
    return bucket


async def stored_info(js: JetStreamContext, name: str) -> ObjectInfo | None:
    """The metadata of the checkpoint ``name``; None when there is none (or it is deleted,
    or unreadable). Read by direct get, which any replica answers: the bucket's own
    ``get_info`` asks the stream's leader, and a frozen one held every fresh load."""
    subject = meta_subject(name, bucket=BUCKET)
    try:
        async with asyncio.timeout(META_TIMEOUT):
            meta = await js.get_last_msg(f"OBJ_{BUCKET}", subject, direct=True)
    except NotFoundError:
        return None
    try:
        info = ObjectInfo.from_response(json.loads(meta.data or b""))
    except (ValueError, TypeError, KeyError):
        return None
    return None if info.deleted else info


async def read_checkpoint(
    js: JetStreamContext, info: ObjectInfo, write: Callable[[bytes], object]
) -> bool:
    """Hand the checkpoint's bytes to ``write``; whether they were all of it, as its
    metadata describes it (nats-py's TimeoutError when a chunk takes :data:`CHUNK_TIMEOUT`)."""
    return (await copy_object(js, BUCKET, info, write, CHUNK_TIMEOUT)).whole


async def event_digest(js: JetStreamContext, seq: int) -> str | None:
    """The digest of the log's event at ``seq`` (None: there is none), which a checkpoint
    records to be trusted only while the log holds that very event there. TimeoutError past
    :data:`META_TIMEOUT` (a frozen replica took the read): nats-py would wait 5 s."""
    try:
        async with asyncio.timeout(META_TIMEOUT):
            found = await js.get_msg(subjects.EVENTS_STREAM, seq=seq, direct=True)
    except NotFoundError:
        return None
    return message_digest(found.subject or "", found.data or b"")


async def list_checkpoints(js: JetStreamContext) -> list[Stored]:
    """Every checkpoint in the bucket (its metadata only), of every kind."""
    present = await bucket_subjects(js, bucket=BUCKET)
    if not present:
        return []
    return await list_stored(js, present, bucket=BUCKET)


async def _purge_strays(js: JetStreamContext, grace: float) -> None:
    """Purge the chunks no checkpoint names (a write killed between its chunks and its
    metadata) whose last chunk is older than ``grace``: a write still running elsewhere
    has written one lately. Nothing else would ever remove them. (Purging a write's chunks
    all the same would cost only a fold from sequence 1.)"""
    try:
        present = await bucket_subjects(js, bucket=BUCKET)
        if not present:
            return
        live = await list_stored(js, present, bucket=BUCKET)
        strays = await stray_chunks(js, present, live, bucket=BUCKET)
        for subject in stale_chunks(strays, datetime.now(UTC), grace):
            await purge_chunks(js, subject, bucket=BUCKET)
            log.info("checkpoints bucket: purged the chunks of a write cut off, %s", subject)
    except (NatsError, OSError, TimeoutError) as exc:
        log.warning("checkpoints bucket: stray chunks not looked for (%r)", exc)
