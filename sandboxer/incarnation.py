"""Which process made something: its pid with its start time and the boot, not the pid alone.

After a restart (a container's pid 1, a reboot) a dead process's pid is another
process's, often the restarted worker's own: what the dead one left, named by pid
alone, looks live for good. Pool keepers name themselves with this, and scratch
directories carry it in their names.
"""

from __future__ import annotations

from pathlib import Path

from sandboxer.extensions.local.procs import start_time

__all__ = ["incarnation"]


def incarnation(pid: int) -> str:
    """``<start time>@<boot id>`` of process ``pid``: which process, not only which pid."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        boot = ""
    return f"{start_time(pid) or 0}@{boot}"
