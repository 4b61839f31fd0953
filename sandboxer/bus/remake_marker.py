"""The floor a guarded durable is being made again from, kept on disk while it is gone.

A remake (bus/guarded_durable.py) deletes the durable, then creates it after the floor the
process remembers. Cut between the two (kill -9, a create that fails before the process
stops, a cancel landing mid-remake), the durable is gone and the floor with the process: the
next start would make the durable from the start of the log, and read it all again. So the
floor is written here before the delete, and removed once the durable is made; a start that
finds it, with the durable missing (or redefined), makes it from there. Processes sharing a
home share the file: a running one that finds the durable missing or redefined reads it too
(another's remake may have been cut short), and one whose own remake lost the race (its
create refused, the durable made by another after this file was removed and written again)
removes it once it finds the durable intact with an ack floor at or above the one kept; one
above is left (another process's remake may be between writing it and its delete). A remake
that deletes the durable writes the floor again after the delete, in case another's look
removed it meanwhile (bus/guarded_durable.py).

**Only while a remake runs.** A durable missing with no marker is made from the start of the
log, as an operator who deletes one (with its role stopped) asks for: the State Hub is sent
everything again that way (docs/integrations/state-hub.md).

**Trust.** Only the service's own processes write here (``$SANDBOXER_HOME/guarded/``), and
only a floor read off the durable while intact: everything up to it that the service's filter
takes was handled. Nothing a bus client can write is read into it: not the durable's config
or ``metadata`` (a client's create through the bare subject replaces them), nor the ack floor
of a durable a client has written (narrowed, it moves past events never handled). A floor
kept for a stream since deleted and made again would skip the new stream's first events, so
the marker names the stream's creation time, and one for another incarnation is ignored.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from sandboxer.synced_files import replace_synced

__all__ = ["RemakeMarker", "marker_file"]

log = logging.getLogger(__name__)


def marker_file(home: Path, durable: str) -> Path:
    """Where the remake of ``durable`` keeps its floor, under the service's home."""
    return home / "guarded" / f"{durable}.json"


class RemakeMarker:
    """The marker of one durable. A disk that fails it is logged and otherwise ignored: a
    remake cut short then reads from the start of the log, as it did without a marker."""

    def __init__(self, path: Path, stream: str) -> None:
        self.path = path
        self._stream = stream

    def exists(self) -> bool:
        return self.path.exists()

    def keep(self, floor: int, stream_created: str) -> None:
        """Write ``floor`` (atomically, synced) before the durable is deleted."""
        record = {"stream": self._stream, "stream_created": stream_created, "floor": floor}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            replace_synced(self.path, json.dumps(record).encode())
        except OSError as exc:
            log.warning("cannot keep the floor of a remake in %s: %s", self.path, exc)

    def read(self, stream_created: str) -> int | None:
        """The floor kept for the stream created at ``stream_created``; None when there is
        none, it cannot be read, or it was kept for another incarnation of the stream."""
        try:
            record = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s: %s", self.path, exc)
            return None
        if not isinstance(record, dict):
            return None
        floor = record.get("floor")
        if (record.get("stream"), record.get("stream_created")) != (self._stream, stream_created):
            log.warning("ignoring %s: kept for another incarnation of the stream", self.path)
            return None
        return floor if isinstance(floor, int) and floor > 0 else None

    def clear(self) -> None:
        """Once the durable is made (or found made): it keeps its own floor again."""
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove %s: %s", self.path, exc)
