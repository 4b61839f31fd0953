"""Where the stub keeps its sandboxes: one JSON file per record under the worker's data
directory, so they outlive a worker restart (adoption, quota and stale detection read them).

Every write goes to a temporary file in the same directory and is renamed over the record,
so a reader (or a crash) sees the old record or the new one, never half of one. File work
runs in a thread: the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from sandboxer.errors import ExtensionError
from sandboxer.extensions.saas_stub.rules import Record
from sandboxer.ids import is_valid_sandbox_id
from sandboxer.synced_files import replace_synced

__all__ = ["Listing", "RecordStore"]

_SUFFIX = ".json"


@dataclass(frozen=True)
class Listing:
    records: list[Record] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)
    """Sandbox id -> why its file could not be read (edited by hand, a foreign file)."""


class RecordStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, sandbox_id: str) -> Path:
        # Callers validated the id; a record's name is the id, nothing else.
        return self.root / f"{sandbox_id}{_SUFFIX}"

    async def read(self, sandbox_id: str) -> Record | None:
        return await asyncio.to_thread(self._read, sandbox_id)

    async def read_all(self) -> Listing:
        return await asyncio.to_thread(self._read_all)

    async def write(self, record: Record) -> None:
        await asyncio.to_thread(self._write, record)

    async def delete(self, sandbox_id: str) -> None:
        await asyncio.to_thread(self._path(sandbox_id).unlink, missing_ok=True)

    # -- in a thread -----------------------------------------------------------------------

    def _read(self, sandbox_id: str) -> Record | None:
        path = self._path(sandbox_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return msgspec.json.decode(data, type=Record)
        except msgspec.DecodeError as exc:
            raise ExtensionError(
                f"the stub's record {path} is unreadable ({exc}); delete the file to drop "
                "the sandbox"
            ) from exc

    def _read_all(self) -> Listing:
        listing = Listing()
        if not self.root.is_dir():
            return listing
        for path in sorted(self.root.glob(f"*{_SUFFIX}")):
            sandbox_id = path.name.removesuffix(_SUFFIX)
            if not is_valid_sandbox_id(sandbox_id):
                continue  # not a record of ours (temporary files start with a dot)
            try:
                listing.records.append(msgspec.json.decode(path.read_bytes(), type=Record))
            except FileNotFoundError:
                continue  # torn down while we listed
            except msgspec.DecodeError as exc:
                listing.unreadable[sandbox_id] = str(exc)
        return listing

    def _write(self, record: Record) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        replace_synced(self._path(record.sandbox_id), msgspec.json.encode(record))
