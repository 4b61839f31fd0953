"""The meter export: every ``usage_metered`` event, exactly once and in order, to a JSON-lines
file and, optionally, POSTed to a billing endpoint (docs/payments.md#export).

Each destination keeps its own position, and reads the log from there with an
ordered consumer filtered on ``sandboxer.evt.account.*.usage_metered``:

- **the file** is its own position: every line carries the event's
  ``stream_seq``, and at start the exporter reads the last complete line (a
  line a crash cut short is cut off first), so a restart continues after the
  last line written and never writes one twice. Each line is flushed and
  synced before the next event is read.
- **the endpoint** gets one POST per event, in order, with the event id as its
  ``Idempotency-Key``; while it is down (connection errors, timeouts, any
  answer but 2xx) the POST is retried with exponential backoff
  (``workers/http_delivery.py``, shared with the State Hub projection), and
  only after a 2xx does the position (``$SANDBOXER_HOME/meter-export/http.position``)
  move on. A crash between the answer and the position repeats that one POST
  with the same key, which the endpoint deduplicates.

The two run as separate tasks, so an endpoint that is down holds back neither
the file nor anything else of the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from nats.js import JetStreamContext

from sandboxer import subjects
from sandboxer.bus.event_reader import read_events
from sandboxer.workers.http_delivery import RETRY_WAIT_MAX, HttpDelivery, public_url
from sandboxer.workers.restarting import keep_running

if TYPE_CHECKING:
    import httpx

__all__ = ["FileExport", "HttpExport", "export_line", "run_meter_export"]

log = logging.getLogger(__name__)


def export_line(seq: int, data: bytes) -> bytes:
    """The line exported for the stored event ``data`` at stream sequence ``seq``: the event's
    own JSON object (every field, including any a later version adds) plus ``stream_seq``."""
    body: dict[str, Any] = msgspec.json.decode(data)
    body["stream_seq"] = seq
    return msgspec.json.encode(body) + b"\n"


def _last_exported(path: Path) -> int:
    """The ``stream_seq`` of the file's last complete line (0 for none); a last line without
    its newline (a crash in the middle of writing it) is cut off, to be written again."""
    if not path.exists():
        return 0
    with path.open("rb+") as handle:
        start = handle.seek(0, os.SEEK_END)
        tail = b""
        while start > 0 and tail.count(b"\n") < 2:  # back until the last line is whole
            step = min(65536, start)
            start -= step
            handle.seek(start)
            tail = handle.read(step) + tail
        if not tail.endswith(b"\n"):
            whole = tail.rfind(b"\n") + 1
            handle.truncate(start + whole)
            tail = tail[:whole]
    lines = [line for line in tail.split(b"\n") if line.strip()]
    return int(msgspec.json.decode(lines[-1])["stream_seq"]) if lines else 0


class FileExport:
    """Appends each ``usage_metered`` to a JSON-lines file, exactly once, in log order."""

    def __init__(self, js: JetStreamContext, path: Path) -> None:
        self._js = js
        self.path = path

    async def run(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        position = _last_exported(self.path)
        log.info("meter export to %s resumes after event %d", self.path, position)
        async for seq, _subject, data, _pending in read_events(
            self._js, start_seq=position + 1, filter_subject=subjects.USAGE_METERED, follow=True
        ):
            if seq <= position:
                continue
            line = export_line(seq, data)
            # Written whole, flushed and synced before the next event: a crash loses at most a
            # line cut short, which the restart cuts off and writes again.
            with self.path.open("ab") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
            position = seq


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

    def _position(self) -> int:
        try:
            return int(self.position_file.read_text().strip() or 0)
        except FileNotFoundError:
            return 0

    def _save_position(self, seq: int) -> None:
        scratch = self.position_file.with_suffix(".tmp")
        scratch.write_text(f"{seq}\n")
        scratch.replace(self.position_file)

    async def run(self) -> None:
        self.position_file.parent.mkdir(parents=True, exist_ok=True)
        position = self._position()
        log.info("meter export to %s resumes after event %d", public_url(self.url), position)
        delivery = HttpDelivery(
            self.url, label="meter export", client=self._client, wait_max=self._wait_max
        )
        try:
            async for seq, _subject, data, _pending in read_events(
                self._js, start_seq=position + 1, filter_subject=subjects.USAGE_METERED, follow=True
            ):
                if seq <= position:
                    continue
                event_id = str(msgspec.json.decode(data).get("event_id", seq))
                await delivery.post(
                    export_line(seq, data).rstrip(b"\n"),
                    {"Idempotency-Key": event_id},  # the endpoint deduplicates on it
                    what=f"event {event_id}",
                )
                self._save_position(seq)
                position = seq
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
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
