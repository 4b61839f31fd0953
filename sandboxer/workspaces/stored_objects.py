"""The workspaces bucket's objects as the collection sees them, and the two writes that race.

nats-py's ``ObjectStore`` hides what collecting safely needs: when an object's metadata
was last written (the meta message's stream time; its ``mtime`` field is the writer's
clock and only the put's), that message's sequence, and the chunks no metadata names
(a put killed before it wrote its metadata, or a delete or replacement killed between
its metadata and its purge). So this reads the bucket's stream itself.

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

import base64
import json
from collections.abc import Iterable
from datetime import datetime

from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import APIError, NotFoundError

from sandboxer import subjects
from sandboxer.bus.object_chunks import nats_digest
from sandboxer.domain.bucket_objects import Stored
from sandboxer.domain.snapshot_objects import OWNER_HEADER, owner_of

__all__ = [
    "bucket_subjects",
    "list_stored",
    "meta_subject",
    "purge_chunks",
    "remove_unchanged",
    "stored_object",
    "stray_chunks",
    "touch_stored",
]

STREAM = f"OBJ_{subjects.WORKSPACES_BUCKET}"
_CHUNKS = f"$O.{subjects.WORKSPACES_BUCKET}.C."
_ROLLUP = {"Nats-Rollup": "sub"}
_WRONG_LAST_SEQUENCE = 10071
"""JetStream's error code for a publish whose expected last subject sequence is not."""


def meta_subject(name: str, *, bucket: str = subjects.WORKSPACES_BUCKET) -> str:
    """The subject of an object's metadata (its name in base64url, as nats-py writes it)."""
    return f"$O.{bucket}.M." + base64.urlsafe_b64encode(name.encode()).decode()


def _stored(seq: int, written: datetime, data: bytes) -> Stored | None:
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


async def bucket_subjects(
    js: JetStreamContext, *, bucket: str = subjects.WORKSPACES_BUCKET
) -> dict[str, int] | None:
    """Every subject of the bucket's stream with its message count (None: no bucket): one
    stream info, a subject's name per object and per chunked put, never a message. (Every
    function here that takes ``bucket`` serves the account checkpoints' bucket too.)"""
    try:
        info = await js.stream_info(f"OBJ_{bucket}", subjects_filter=f"$O.{bucket}.>")
    except NotFoundError:
        return None
    return dict(info.state.subjects or {})


async def list_stored(
    js: JetStreamContext, present: dict[str, int], *, bucket: str = subjects.WORKSPACES_BUCKET
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
            found = _stored(msg.metadata.sequence.stream, msg.metadata.timestamp, msg.data)
            if found is not None:
                live.append(found)
    finally:
        await sub.unsubscribe()
    return live


async def stored_object(js: JetStreamContext, name: str) -> Stored | None:
    """``name`` as stored now (None: absent, removed, or no bucket): its metadata's last
    message, to read before deciding on the object, so that the removal then writes only
    over that message (:func:`remove_unchanged`)."""
    try:
        last = await js.get_last_msg(STREAM, meta_subject(name))
    except NotFoundError:
        return None
    if last.seq is None or last.time is None:
        return None
    return _stored(last.seq, last.time, last.data or b"")


async def stray_chunks(
    js: JetStreamContext,
    present: dict[str, int],
    live: Iterable[Stored],
    *,
    bucket: str = subjects.WORKSPACES_BUCKET,
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


async def purge_chunks(
    js: JetStreamContext, subject: str, *, bucket: str = subjects.WORKSPACES_BUCKET
) -> None:
    """Remove the chunks on ``subject`` (idempotent: a purge of nothing succeeds)."""
    await js.purge_stream(f"OBJ_{bucket}", subject=subject)


async def _write_unless_changed(js: JetStreamContext, name: str, seq: int, data: bytes) -> bool:
    try:
        await js.publish(
            meta_subject(name),
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
        await purge_chunks(js, _CHUNKS + found.nuid)
    return True


async def touch_stored(js: JetStreamContext, name: str, sha256: str, size: int) -> bool:
    """Whether ``name`` is stored with these bytes (its SHA-256 hex and size); when it is,
    its metadata is written again first (its age starts over, its snapshot mark dropped),
    so no collection removes it for the grace period. False: store it (absent, other bytes,
    or removed or changed under this call)."""
    try:
        last = await js.get_last_msg(STREAM, meta_subject(name))
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
