"""What the State Hub projection has delivered, refused and last failed at.

The position itself is the durable consumer's (JetStream keeps it, and counts
what is pending); this record keeps what the position does not say: the last
event the hub took, the last error, and every refused delivery (the newest
:data:`KEEP_REFUSED`). The role keeps it in memory and writes it to
``$SANDBOXER_HOME/statehub/status.json`` (atomically) whenever it changes, so a
restart shows the same history and ``sandboxer statehub status`` can read it
while the role is down.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandboxer.clock import utc_now

__all__ = ["KEEP_REFUSED", "DeliveryStatus"]

KEEP_REFUSED = 50
"""Refused deliveries kept in the status (all of them are in the log)."""


def _summary(body: dict[str, Any]) -> dict[str, Any]:
    return {key: body.get(key) for key in ("event_id", "type", "sandbox_id", "stream_seq", "at")}


@dataclass
class DeliveryStatus:
    delivered: int = 0
    last_delivered: dict[str, Any] | None = None
    last_error: dict[str, Any] | None = None
    """The last failed attempt: ``error``, ``at``, and the event it was for."""
    retrying: dict[str, Any] | None = None
    """The event held back while the hub fails (None once it is delivered or refused)."""
    refused_count: int = 0
    refused: list[dict[str, Any]] = field(default_factory=list)

    def on_delivered(self, body: dict[str, Any]) -> None:
        self.delivered += 1
        self.last_delivered = {**_summary(body), "delivered_at": utc_now()}
        self.retrying = None

    def on_failure(self, body: dict[str, Any], error: str, status: int | None) -> None:
        self.last_error = {"error": error, "status": status, "at": utc_now(), **_summary(body)}
        self.retrying = _summary(body)

    def on_refused(self, body: dict[str, Any], error: str, status: int | None) -> None:
        self.on_failure(body, error, status)
        self.retrying = None
        self.refused_count += 1
        self.refused = [*self.refused, dict(self.last_error or {})][-KEEP_REFUSED:]

    def as_dict(self) -> dict[str, Any]:
        return {
            "delivered": self.delivered,
            "last_delivered": self.last_delivered,
            "last_error": self.last_error,
            "retrying": self.retrying,
            "refused_count": self.refused_count,
            "refused": self.refused,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeliveryStatus:
        refused = data.get("refused")
        return cls(
            delivered=int(data.get("delivered") or 0),
            last_delivered=data.get("last_delivered"),
            last_error=data.get("last_error"),
            refused_count=int(data.get("refused_count") or 0),
            refused=list(refused) if isinstance(refused, list) else [],
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_suffix(".tmp")
        scratch.write_text(json.dumps(self.as_dict(), indent=2))
        scratch.replace(path)

    @classmethod
    def load(cls, path: Path) -> DeliveryStatus:
        """The saved status (an empty one when there is none or it cannot be read)."""
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls()
        return cls.from_dict(data) if isinstance(data, dict) else cls()
