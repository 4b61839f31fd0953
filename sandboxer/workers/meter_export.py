"""The meter export: every ``usage_metered`` event, exactly once and in order, to a JSON-lines
file and, optionally, POSTed to a billing endpoint (docs/payments.md#export).

Each destination keeps its own position, and reads the log from there one event at a time
(:func:`usage_after`: the next event is asked for only once the last one is handled, so a
destination that is down or slow holds one event in memory, not the backlog):

- **the file** is its own position: every line carries the event's
  ``stream_seq``, and at start the exporter reads the last complete line (a
  line a crash cut short is cut off first), so a restart continues after the
  last line written and never writes one twice. Each line is flushed and
  synced before the next event is read. A last line it did not write (not a
  JSON object with a ``stream_seq``), or another log's (no such usage event in
  this log at its ``stream_seq``), stops the file's export, logged with the
  fix, until the file is mended: going on after a line it cannot read, or
  after another log's position, would guess, and a guess duplicates or loses
  usage. (Before, such a line crashed the export at every restart, or another
  log's position waited silently for this log to pass it.)
- **the endpoint** gets one POST per event, in order, with the event id as its
  ``Idempotency-Key``; while it is down (connection errors, timeouts, any
  answer but 2xx) the POST is retried with exponential backoff
  (``workers/http_delivery.py``, shared with the State Hub projection), and
  only after a 2xx does the position (``$SANDBOXER_HOME/meter-export/http.position``)
  move on, written durably (synced, renamed, directory synced). A crash between
  the answer and the position repeats that one POST with the same key, which the
  endpoint deduplicates. A position file that does not hold a sequence, or holds
  one that is not a usage event of this log (another log's), stops the export
  (logged with the fix) until it does: starting over from 0 would send events
  again past the endpoint's deduplication window.

An event that is not a JSON object (malformed bytes: no writer of ours stores one) is
skipped by both, logged as an error with its sequence, as every other reader of the log
skips an event it cannot read (docs/protocol.md#compatibility): stopping at it would stop
every later export for good.

The two run as separate tasks, so an endpoint that is down holds back neither
the file nor anything else of the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from sandboxer import subjects
from sandboxer.cleanup_waits import cancel_until_done
from sandboxer.errors import BusError, UnreadableEvent
from sandboxer.synced_files import replace_synced
from sandboxer.workers.http_delivery import RETRY_WAIT_MAX, HttpDelivery, public_url
from sandboxer.workers.restarting import keep_running

if TYPE_CHECKING:
    import httpx

__all__ = ["FileExport", "HttpExport", "export_line", "run_meter_export", "usage_after"]

log = logging.getLogger(__name__)

POLL = 1.0
"""How long an export that has caught up with the log waits before asking for a new event."""

POSITION_RECHECK = 10.0
"""How often a stopped endpoint export reads its position file again, to go on once mended."""


async def usage_after(
    js: JetStreamContext, position: int
) -> AsyncGenerator[tuple[int, bytes], None]:
    """``(stream_seq, data)`` of every ``usage_metered`` after ``position``, in log order, for
    ever. Each is a direct get of the next one on the subject, asked for once the caller is
    done with the last: an ordered push consumer (``bus/event_reader.py``) would hand over
    everything the server sends while the caller waits for an endpoint, the whole backlog."""
    while True:
        try:
            found = await js.get_msg(
                subjects.EVENTS_STREAM,
                seq=position + 1,
                subject=subjects.USAGE_METERED,
                direct=True,
                next=True,
            )
        except NotFoundError:  # none stored after it yet
            await asyncio.sleep(POLL)
            continue
        if found.seq is None or found.seq <= position:
            raise BusError(f"the next usage after event {position} came without a later sequence")
        position = found.seq
        yield position, found.data or b""


def _exported(seq: int, data: bytes) -> dict[str, Any]:
    """The object exported for the stored event ``data`` at stream sequence ``seq``: the
    event's own JSON object (every field, including any a later version adds) plus
    ``stream_seq``; UnreadableEvent when ``data`` is not a JSON object."""
    try:
        body = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise UnreadableEvent(f"event {seq} is not readable JSON: {exc}") from None
    if not isinstance(body, dict):
        raise UnreadableEvent(f"event {seq} is not a JSON object")
    body["stream_seq"] = seq
    return body


def export_line(seq: int, data: bytes) -> bytes:
    """The line exported for the stored event ``data`` at stream sequence ``seq``."""
    return msgspec.json.encode(_exported(seq, data)) + b"\n"


def _skip(destination: str, seq: int, unreadable: UnreadableEvent) -> None:
    log.error(
        "meter export to %s skips %s; nothing is exported for it (see it with "
        "'nats stream get %s %d', and bill by hand what it recorded, if anything)",
        destination,
        unreadable.message,
        subjects.EVENTS_STREAM,
        seq,
    )


LINE_MAX = 1024 * 1024
"""The longest last line the file export reads back (one it wrote is about a kilobyte): a
longer one is not its own, and is reported rather than read into memory whole."""

CHUNK = 65536


def _cut_torn_line(handle: BinaryIO) -> int:
    """Cut off a last line without its newline (a crash in the middle of writing it: it is
    written again) and answer where the file now ends."""
    end = handle.seek(0, os.SEEK_END)
    start = end
    whole = 0
    while start > 0:  # back, a chunk at a time, to the last newline
        step = min(CHUNK, start)
        start -= step
        handle.seek(start)
        newline = handle.read(step).rfind(b"\n")
        if newline >= 0:
            whole = start + newline + 1
            break
    if whole < end:
        handle.truncate(whole)
        log.warning(
            "meter export cut off %d bytes of a last line a crash left unfinished", end - whole
        )
    return whole


def _last_line(handle: BinaryIO, end: int) -> bytes | None:
    """The last line of the file (which ends at ``end`` with a newline) that is not blank;
    b"" when there is none; None when it and the blank lines after it pass LINE_MAX."""
    start = end
    tail = b""
    while start > 0:
        step = min(CHUNK, start)
        start -= step
        handle.seek(start)
        tail = handle.read(step) + tail
        if b"\n" in tail.rstrip():  # the last line is whole, from its start
            break
        if len(tail) > LINE_MAX:  # not the export's (nor read into memory any further)
            return None
    body = tail.rstrip()
    line = body[body.rfind(b"\n") + 1 :]
    return None if len(line) > LINE_MAX else line


def _last_exported(path: Path) -> dict[str, Any] | str | None:
    """The object of the file's last line (None for no line; a last line a crash cut short
    is cut off first, to be written again), or why that line is not one this export wrote
    (a ``str``): a file the export cannot go on from is reported, not guessed at."""
    if not path.exists():
        return None
    with path.open("rb+") as handle:
        line = _last_line(handle, _cut_torn_line(handle))
    if line is None:
        return f"its last {LINE_MAX} bytes hold no whole line (the export writes about 1 KB a line)"
    if not line:
        return None
    try:
        body = msgspec.json.decode(line)
    except msgspec.DecodeError:
        body = None
    seq = body.get("stream_seq") if isinstance(body, dict) else None
    if not isinstance(body, dict) or type(seq) is not int or seq < 1:
        return f"its last line, {line[:80]!r}, is not a usage line with a stream_seq"
    return body


async def _not_in_log(js: JetStreamContext, seq: int, exported: dict[str, Any] | None) -> str:
    """Why position ``seq`` is not one of this log's usage events ('' when it is): there
    must be a ``usage_metered`` at ``seq`` and, when the line ``exported`` for it is known,
    it must be that line's event. A position past the log's end, or at another event, is
    another log's (a file or position kept from another installation, or from a log made
    again): going on after it would leave out every usage of this log up to it."""
    try:
        found = await js.get_msg(
            subjects.EVENTS_STREAM, seq=seq, subject=subjects.USAGE_METERED, direct=True, next=True
        )
    except NotFoundError:
        found = None
    if found is None or found.seq != seq:
        return f"this log holds no usage event at sequence {seq} (it may end before it)"
    if exported is not None:
        try:
            same = _exported(seq, found.data or b"") == exported
        except UnreadableEvent:
            same = False
        if not same:
            return f"this log's usage event {seq} is another one than the line's"
    return ""


class FileExport:
    """Appends each ``usage_metered`` to a JSON-lines file, exactly once, in log order."""

    def __init__(self, js: JetStreamContext, path: Path) -> None:
        self._js = js
        self.path = path

    async def _position(self) -> int | None:
        """The ``stream_seq`` of the file's last line (0 for none); None, logged with the
        fix, when that line is not one this export wrote or is another log's event."""
        last = _last_exported(self.path)
        if last is None:
            return 0
        if isinstance(last, dict):
            seq = int(last["stream_seq"])
            why = await _not_in_log(self._js, seq, last)
            if not why:
                return seq
            fix = (
                "it is another log's export: set SANDBOXER_METER_EXPORT_FILE to a new file for "
                "this log (or move this one away), and the export writes every usage of this "
                "log into it from the start"
            )
        else:
            why = last
            fix = (
                "remove that line (and any other the export did not write): the export goes "
                "on after the line before it, writing again the usage that line may have been"
            )
        log.error(
            "meter export to %s stopped: %s; %s. Checking again every %g s",
            self.path,
            why,
            fix,
            POSITION_RECHECK,
        )
        return None

    async def run(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        position = await self._position()
        while position is None:  # stopped until someone mends the file
            await asyncio.sleep(POSITION_RECHECK)
            position = await self._position()
        log.info("meter export to %s resumes after event %d", self.path, position)
        async with contextlib.aclosing(usage_after(self._js, position)) as usage:
            async for seq, data in usage:
                try:
                    line = export_line(seq, data)
                except UnreadableEvent as unreadable:
                    # (skipped again after a restart when it is the log's last usage)
                    _skip(str(self.path), seq, unreadable)
                    continue
                # Written whole, flushed and synced before the next event: a crash loses at
                # most a line cut short, which the restart cuts off and writes again.
                with self.path.open("ab") as handle:
                    handle.write(line)
                    handle.flush()
                    os.fsync(handle.fileno())


class HttpExport:
    """POSTs each ``usage_metered`` to a billing endpoint, in order, retrying while it is down."""

    def __init__(
        self,
        js: JetStreamContext,
        url: str,
        position_file: Path,
        *,
        client: httpx.AsyncClient | None = None,
        wait_max: float = RETRY_WAIT_MAX,
    ) -> None:
        self._js = js
        self.url = url
        self.position_file = position_file
        self._client = client
        self._wait_max = wait_max

    def _position(self) -> int | None:
        """The last event the endpoint took (0 before the first); None, logged with the fix,
        when the file holds anything but a sequence (an empty file included)."""
        try:
            text = self.position_file.read_bytes().decode("ascii").strip()
            if text.isdigit():
                return int(text)
            why = f"holds {text[:40]!r}"
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as exc:
            why = f"cannot be read ({exc})"
        log.error(
            "meter export to %s stopped: its position file %s %s, not the stream_seq of the "
            "last event the endpoint took. Write that number there (the highest stream_seq "
            "the endpoint has; 0 sends every event again, deduplicated by the endpoint only "
            "if it keeps every Idempotency-Key); checking again every %g s",
            public_url(self.url),
            self.position_file,
            why,
            POSITION_RECHECK,
        )
        return None

    async def _position_in_log(self) -> int | None:
        """:meth:`_position`, and None, logged with the fix, when it is not a usage event
        of this log (another log's position: past this one's end, or at another event)."""
        position = self._position()
        if not position:
            return position
        why = await _not_in_log(self._js, position, None)
        if not why:
            return position
        log.error(
            "meter export to %s stopped: its position file %s holds %d, but %s: it is another "
            "log's. Write there the highest stream_seq of this log the endpoint has (0 sends "
            "every usage of this log); checking again every %g s",
            public_url(self.url),
            self.position_file,
            position,
            why,
            POSITION_RECHECK,
        )
        return None

    def _save_position(self, seq: int) -> None:
        # Synced and renamed, the directory synced: after a power cut the file holds the old
        # position or the new one, never nothing (which would read as unreadable, above).
        replace_synced(self.position_file, f"{seq}\n".encode())

    async def run(self) -> None:
        self.position_file.parent.mkdir(parents=True, exist_ok=True)
        position = await self._position_in_log()
        while position is None:  # stopped until someone mends the file
            await asyncio.sleep(POSITION_RECHECK)
            position = await self._position_in_log()
        log.info("meter export to %s resumes after event %d", public_url(self.url), position)
        delivery = HttpDelivery(
            self.url, label="meter export", client=self._client, wait_max=self._wait_max
        )
        try:
            async with contextlib.aclosing(usage_after(self._js, position)) as usage:
                async for seq, data in usage:
                    try:
                        body = _exported(seq, data)
                    except UnreadableEvent as unreadable:
                        _skip(public_url(self.url), seq, unreadable)
                    else:
                        event_id = str(body.get("event_id", seq))
                        await delivery.post(
                            msgspec.json.encode(body),
                            {"Idempotency-Key": event_id},  # the endpoint deduplicates on it
                            what=f"event {event_id}",
                        )
                    self._save_position(seq)
        finally:
            await delivery.aclose()


async def run_meter_export(
    js: JetStreamContext,
    stop: asyncio.Event,
    *,
    file: Path | None,
    url: str | None,
    home: Path,
) -> None:
    """Run the configured destinations until ``stop`` (each restarts after an error)."""
    exports: list[FileExport | HttpExport] = []
    if file is not None:
        exports.append(FileExport(js, file))
    if url is not None:
        exports.append(HttpExport(js, url, home / "meter-export" / "http.position"))
    if not exports:
        return

    tasks = [
        asyncio.create_task(keep_running("meter export", export.run, stop)) for export in exports
    ]
    try:
        await stop.wait()
    finally:
        await cancel_until_done(*tasks)
