"""Host telemetry from ``/proc/loadavg``, ``/proc/meminfo`` and ``df -Pk``: pure parsers.

Shared by every backend that reports on a Linux host, local or over SSH, so
that ``sandboxer inspect host`` shows the same fields whatever the backend.
"""

from __future__ import annotations

from typing import Any

__all__ = ["parse_df", "parse_loadavg", "parse_meminfo"]


def parse_loadavg(text: str) -> dict[str, float]:
    """``0.52 0.58 0.59 1/467 12345`` -> the 1, 5 and 15 minute load averages."""
    one, five, fifteen = (float(part) for part in text.split()[:3])
    return {"load1": one, "load5": five, "load15": fifteen}


def parse_meminfo(text: str) -> dict[str, int]:
    """Total and available memory in MiB."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in {"MemTotal", "MemAvailable"}:
            values[name] = int(rest.split()[0]) // 1024
    return {
        "memory_total_mb": values.get("MemTotal", 0),
        "memory_available_mb": values.get("MemAvailable", 0),
    }


def parse_df(text: str) -> dict[str, Any]:
    """The last line of ``df -Pk PATH``: size and free space of its filesystem, in MiB."""
    fields = text.strip().splitlines()[-1].split()
    return {
        "disk_total_mb": int(fields[1]) // 1024,
        "disk_free_mb": int(fields[3]) // 1024,
        "disk_mount": fields[5],
    }
