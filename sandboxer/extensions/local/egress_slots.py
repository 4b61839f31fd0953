"""Host-wide allocation of link slots (169.254.0.0/16 /30 blocks) to local sandboxes.

A slot is taken by creating ``<slots dir>/<n>`` with ``O_EXCL``: the kernel
makes that atomic, so concurrent provisions (threads, workers, two roots on
one host) never get the same block, without a lock. The file holds the
sandbox's resource name (``<id>-<root tag>``), so whoever tears the sandbox
down, even a restarted worker that lost ``state.json``, finds and frees its
slots by that name. The directory lives under ``/run`` like the network
namespaces (``/run/netns``): both vanish together at reboot.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from sandboxer.errors import ExtensionError
from sandboxer.extensions.local.egress_policy import SLOTS

__all__ = ["SLOTS_DIR", "allocate", "owned_by", "release"]

SLOTS_DIR = Path("/run/sandboxer/egress-slots")


def allocate(name: str, directory: Path = SLOTS_DIR) -> int:
    """Take a free slot for ``name`` (the one it already holds, if any: redelivery is idempotent)."""
    held = owned_by(name, directory)
    if held:
        return held[0]
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Start where the name hashes to: concurrent callers rarely probe the same files.
    start = int(hashlib.sha256(name.encode()).hexdigest(), 16) % len(SLOTS)
    for offset in range(len(SLOTS)):
        slot = SLOTS[(start + offset) % len(SLOTS)]
        try:
            fd = os.open(directory / str(slot), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(name + "\n")
        return slot
    raise ExtensionError(
        f"no free egress slot in {directory}: {len(SLOTS)} sandboxes with network access "
        "exist on this host; destroy some (or reap leftovers with sandboxer reap-stale --apply)",
        extension="ext.local",
    )


def owned_by(name: str, directory: Path = SLOTS_DIR) -> list[int]:
    """The slots whose file names ``name``."""
    try:
        entries = list(directory.iterdir())
    except OSError:  # none yet, or not ours to read (a worker without root never builds any)
        return []
    slots = []
    for entry in entries:
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if entry.read_text().strip() == name:
                slots.append(int(entry.name))
    return sorted(slots)


def release(name: str, slot: int, directory: Path = SLOTS_DIR) -> None:
    """Free ``slot`` if ``name`` still holds it (never someone else's)."""
    path = directory / str(slot)
    with contextlib.suppress(OSError):
        if path.read_text().strip() == name:
            path.unlink()
