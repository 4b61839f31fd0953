"""The workspaces bucket's objects as the collection sees them, and the two writes that race.

nats-py's ``ObjectStore`` hides what collecting safely needs: when an object's metadata
was last written (the meta message's stream time; its ``mtime`` field is the writer's
clock and only the put's), that message's sequence, and the chunks no metadata names
(a put killed before it wrote its metadata, or a delete or replacement killed between
its metadata and its purge). So the bucket's stream is read itself
(:mod:`sandboxer.bus.object_buckets`, the listing the collection uses).

Two writers race on an object's metadata, and each writes only if the metadata is still
the message it read (``Nats-Expected-Last-Subject-Sequence``):

- a client (or worker) about to name an object already stored **touches** it instead of
  storing it again (:func:`touch_stored`): the metadata written again, now, so the object
  is as young as a fresh put and the collection's grace starts over. A touch drops the
  snapshot mark: someone other than the snapshot's job now wants it, so the snapshot rule
  (which ignores age) no longer decides it;
- the collection **removes** only the metadata it judged (:func:`remove_unchanged`): an
  object touched since is left alone, and a touch after the removal fails and the toucher
  stores the object again. A snapshot's delete removes the same way, over the metadata it
  read (:func:`stored_object`) before it looked at the log.
"""

from __future__ import annotations

import json

from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from sandboxer import subjects
from sandboxer.bus.object_buckets import meta_subject, nats_digest, purge_chunks, stored_from
from sandboxer.domain.bucket_objects import Stored
from sandboxer.domain.snapshot_objects import OWNER_HEADER

__all__ = ["remove_unchanged", "stored_object", "touch_stored"]

STREAM = f"OBJ_{subjects.WORKSPACES_BUCKET}"
_CHUNKS = f"$O.{subjects.WORKSPACES_BUCKET}.C."
_ROLLUP = {"Nats-Rollup": "sub"}
_WRONG_LAST_SEQUENCE = 10071
"""JetStream's error code for a publish whose expected last subject sequence is not."""


async def stored_object(js: JetStreamContext, name: str) -> Stored | None:
    """``name`` as stored now (None: absent, removed, or no bucket): its metadata's last
    message, to read before deciding on the object, so that the removal then writes only
    over that message (:func:`remove_unchanged`)."""
    try:
        last = await js.get_last_msg(STREAM, meta_subject(name, bucket=subjects.WORKSPACES_BUCKET))
    except NotFoundError:
        return None
    if last.seq is None or last.time is None:
        return None
    return stored_from(last.seq, last.time, last.data or b"")


async def _write_unless_changed(js: JetStreamContext, name: str, seq: int, data: bytes) -> bool:
    try:
        await js.publish(
            meta_subject(name, bucket=subjects.WORKSPACES_BUCKET),
            data,
            stream=STREAM,
            headers={**_ROLLUP, "Nats-Expected-Last-Subject-Sequence": str(seq)},
        )
    except APIError as exc:
        if exc.err_code == _WRONG_LAST_SEQUENCE:
            return False
        raise
    return True


async def remove_unchanged(js: JetStreamContext, found: Stored) -> bool:
    """Delete ``found`` unless its metadata was written since it was listed (a touch, a put
    again, another collection's removal); whether this call removed it. Its chunks are
    purged after: cut off in between, they are strays the next collection purges."""
    tombstone: dict[str, object] = {
        "name": found.name,
        "bucket": subjects.WORKSPACES_BUCKET,
        "nuid": found.nuid,
        "size": 0,
        "chunks": 0,
        "digest": "",
        "deleted": True,
    }
    if not await _write_unless_changed(js, found.name, found.seq, json.dumps(tombstone).encode()):
        return False
    if found.nuid:
        await purge_chunks(js, _CHUNKS + found.nuid, bucket=subjects.WORKSPACES_BUCKET)
    return True


async def touch_stored(js: JetStreamContext, name: str, sha256: str, size: int) -> bool:
    """Whether ``name`` is stored with these bytes (its SHA-256 hex and size); when it is,
    its metadata is written again first (its age starts over, its snapshot mark dropped),
    so no collection removes it for the grace period. False: store it (absent, other bytes,
    or removed or changed under this call)."""
    try:
        last = await js.get_last_msg(STREAM, meta_subject(name, bucket=subjects.WORKSPACES_BUCKET))
    except NotFoundError:
        return False
    try:
        meta = json.loads(last.data or b"")
    except ValueError:
        return False
    if (
        not isinstance(meta, dict)
        or meta.get("deleted")
        or meta.get("digest") != nats_digest(sha256)
        or meta.get("size") != size
        or last.seq is None
    ):
        return False
    headers = meta.get("headers")
    if isinstance(headers, dict) and OWNER_HEADER in headers:
        meta["headers"] = {k: v for k, v in headers.items() if k != OWNER_HEADER} or None
    return await _write_unless_changed(js, name, last.seq, json.dumps(meta).encode())
