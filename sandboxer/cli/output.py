"""Printing for the CLI: JSON for programs, aligned text for people, progress on stderr."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["Progress", "print_json", "print_table", "say"]


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def say(message: str) -> None:
    """A line for people, on stderr so stdout stays clean for data."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    cells = [[str(c) if c is not None else "-" for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    sys.stdout.write(line.rstrip() + "\n")
    for row in cells:
        sys.stdout.write(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n"
        )


class Progress:
    """Shows each lifecycle event as it arrives, with the time since the command was sent."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.started = time.monotonic()

    def __call__(self, event: dict[str, Any]) -> None:
        if not self.enabled:
            return
        elapsed = (time.monotonic() - self.started) * 1000
        detail = ""
        kind = event.get("type")
        if kind == "routed":
            detail = f"{event.get('extension')} ({event.get('reason')})"
        elif kind == "provisioning":
            detail = f"attempt {event.get('attempt')} on {event.get('worker')}"
        elif kind in {"failed", "rejected"}:
            detail = str(event.get("reason"))
        elif kind == "ready":
            warnings = event.get("warnings") or []
            detail = "; ".join(f"warning: {w}" for w in warnings)
        say(f"  {elapsed:8.1f} ms  {kind:<12} {detail}".rstrip())
