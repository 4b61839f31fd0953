"""Host-wide allocation of numbered slots to local sandboxes: link blocks and uids.

Two things on one host must never go to two sandboxes at once: a sandbox's link
block (169.254.0.0/16 /30s, :mod:`.egress`) and its uid (:mod:`.sandbox_uids`).
Each kind is a :class:`SlotFiles`: a slot is taken by creating
``<directory>/<n>`` with ``O_EXCL``. The kernel makes that atomic, so concurrent
provisions (threads, workers, two roots on one host) never get the same one,
without a lock. The file holds its owner's resource name (``<id>-<root tag>``),
so whoever tears the sandbox down, even a restarted worker that lost
``state.json``, finds and frees its slots by that name, and never frees
another's. The directories live under ``/run`` like the network namespaces
(``/run/netns``): all of them vanish together at reboot.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sandboxer.errors import ExtensionError

__all__ = ["RUN_DIR", "SlotFiles"]

RUN_DIR = Path("/run/sandboxer")
"""Where every kind of slot has its directory (root's: only a root-run worker takes slots)."""


@dataclass(frozen=True)
class SlotFiles:
    """The slots of one kind: ``slots`` (the candidates), taken by files in ``directory``."""

    directory: Path
    slots: Sequence[int]
    """Ascending: a file's name is looked up in them by bisection (a set of the 16,000 link
    blocks, built per look, cost 0.35 ms of every local create)."""
    noun: str
    """What one slot is, for messages: ``an egress slot``, ``a uid``."""
    holders: str
    """Who holds them, for the message when none is free: ``sandboxes with network access``."""

    def allocate(self, name: str, *, recorded: int | None = None, fresh: bool = False) -> int:
        """Take a free slot for ``name``, or the one it holds already (redelivery is idempotent).

        ``recorded``, a slot the caller's own record names, is checked first (one read).
        Then every slot file is read, unless ``fresh`` says that ``name`` cannot hold one
        (nothing of its owner was left behind): on a busy host that is most of the cost.
        """
        if recorded is not None and self.holds(name, recorded):
            return recorded
        if not fresh:
            held = self.owned_by(name)
            if held:
                return held[0]
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise self._error(f"the directory cannot be made: {exc.strerror}") from exc
        # Start where the name hashes to: concurrent callers rarely probe the same files.
        count = len(self.slots)
        start = int(hashlib.sha256(name.encode()).hexdigest(), 16) % count
        for offset in range(count):
            slot = self.slots[(start + offset) % count]
            try:
                fd = os.open(
                    self.directory / str(slot), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600
                )
            except FileExistsError:
                continue
            except OSError as exc:
                raise self._error(f"slot file {slot} cannot be made: {exc.strerror}") from exc
            with os.fdopen(fd, "w") as handle:
                handle.write(name + "\n")
            return slot
        raise self._error(
            f"none is free: {count} {self.holders} exist on this host; destroy some (or reap "
            "leftovers with sandboxer reap-stale --apply)"
        )

    def owned_by(self, name: str) -> list[int]:
        """The slots whose file names ``name`` (reads every slot file)."""
        return sorted(slot for slot, owner in self.held().items() if owner == name)

    def held(self) -> dict[int, str]:
        """Every slot taken, and the name its file holds (reads every slot file)."""
        try:
            entries = list(self.directory.iterdir())
        except OSError:  # none yet, or not ours to read (a worker without root takes none)
            return {}
        held = {}
        for entry in entries:
            # Only this kind's candidates: a stray file (a uid 0, by hand) is never one of
            # ours to clear or free.
            if not entry.name.isdigit() or not self._is_slot(int(entry.name)):
                continue
            with contextlib.suppress(OSError):  # freed meanwhile
                held[int(entry.name)] = entry.read_text().strip()
        return held

    def _is_slot(self, number: int) -> bool:
        at = bisect.bisect_left(self.slots, number)
        return at < len(self.slots) and self.slots[at] == number

    def holds(self, name: str, slot: int) -> bool:
        """Whether ``slot``'s file names ``name`` (one read)."""
        try:
            return (self.directory / str(slot)).read_text().strip() == name
        except OSError:
            return False

    def release(self, name: str, slot: int) -> None:
        """Free ``slot`` if ``name`` still holds it (never someone else's)."""
        if self.holds(name, slot):
            with contextlib.suppress(FileNotFoundError):
                (self.directory / str(slot)).unlink()

    def _error(self, why: str) -> ExtensionError:
        return ExtensionError(
            f"cannot take {self.noun} ({self.directory}) for a sandbox: {why}",
            extension="ext.local",
        )
