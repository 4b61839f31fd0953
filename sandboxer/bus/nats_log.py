"""Reading what ``nats-server`` logs: the ports it got, "Server is ready", and its errors.

The server writes to a file rather than a pipe, so a busy event loop can never
stall it on a full pipe; these functions read that file from an offset (where
the current run's lines begin). Lines look like
``[1234] 2026/01/02 03:04:05.678901 [INF] Server is ready``; a line without
that prefix is a command-line error or a Go panic.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "READY_MARK",
    "LogScan",
    "describe",
    "error_lines",
    "read_from",
    "read_lines",
    "scan",
    "strip_prefix",
    "wanted_ports_found",
]

READY_MARK = "Server is ready"
FATAL_MARK = "[FTL]"
ERROR_MARKS = (FATAL_MARK, "[ERR]")
_ADDRESS_RES = {  # where the log says which port the server got
    "port": re.compile(r"Listening for client connections on \S+:(\d+)"),
    "monitor": re.compile(r"Starting http monitor on \S+:(\d+)"),
    "cluster": re.compile(r"Listening for route connections on \S+:(\d+)"),
}
_PREFIX_RE = re.compile(r"^\[\d+\] \S+ \S+ (.*)$")


def read_lines(path: Path, offset: int, *, complete_only: bool) -> list[str]:
    """The lines logged after ``offset``; with ``complete_only``, a half-written last line waits."""
    return read_from(path, offset, complete_only=complete_only)[0]


def read_from(path: Path, offset: int, *, complete_only: bool = True) -> tuple[list[str], int]:
    """:func:`read_lines`, and the offset past what they were read from: where to read next
    (from 0 again when the file is shorter than ``offset``: replaced or truncated)."""
    try:
        with path.open("rb") as handle:
            if handle.seek(0, os.SEEK_END) < offset:
                offset = 0
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return [], offset
    if complete_only:
        data = data[: data.rfind(b"\n") + 1]
    return data.decode(errors="replace").splitlines(), offset + len(data)


def strip_prefix(line: str) -> str:
    """Drop nats-server's ``[pid] date time`` prefix from a log line."""
    match = _PREFIX_RE.match(line)
    return match.group(1) if match else line


def error_lines(lines: Iterable[str]) -> list[str]:
    """The lines logged at the fatal or error level (``[FTL]``, ``[ERR]``)."""
    return [line for line in lines if any(mark in line for mark in ERROR_MARKS)]


@dataclass
class LogScan:
    """What a start-up log has said so far."""

    ports: dict[str, int] = field(default_factory=dict)
    fatal: list[str] = field(default_factory=list)
    ready: bool = False


def scan(lines: Iterable[str]) -> LogScan:
    """The ports, ``[FTL]`` lines and readiness found in ``lines`` (later ports win)."""
    result = LogScan()
    for line in lines:
        if FATAL_MARK in line:
            result.fatal.append(line)
        if READY_MARK in line:
            result.ready = True
        for key, pattern in _ADDRESS_RES.items():
            if match := pattern.search(line):
                result.ports[key] = int(match.group(1))
    return result


def describe(lines: list[str], fatal: list[str]) -> str:
    """The most telling part of a failed start's log, for an error message."""
    said = [line for line in lines if line.strip() and not _PREFIX_RE.match(line)]
    if fatal:
        return "fatal: " + " | ".join(strip_prefix(line) for line in fatal)
    if said:
        return f"it said: {said[0].strip()}"
    return "last log lines: " + (" | ".join(strip_prefix(line) for line in lines[-10:]) or "(none)")


def wanted_ports_found(found: Mapping[str, int], wanted: Mapping[str, int | None]) -> bool:
    """Whether every port the command line asked for was reported."""
    return {key for key, port in wanted.items() if port is not None} <= found.keys()
