"""Process settings, read from the environment once at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Settings"]


def _float_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is not a number of seconds") from exc


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Where sandboxer keeps its data and how it reaches NATS.

    ``SANDBOXER_HOME``: data directory (default ``~/.local/share/sandboxer``).
    ``SANDBOXER_NATS_URL``: one URL or a comma list; when set, no embedded server starts.
    ``SANDBOXER_NATS_SERVER``: path of a ``nats-server`` binary to use instead of the packaged one.
    ``SANDBOXER_ACK_WAIT``: seconds before an unacknowledged job is redelivered (default 30).
    """

    home: Path
    nats_urls: tuple[str, ...]
    nats_server: str | None
    ack_wait: float

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(
            os.environ.get("SANDBOXER_HOME") or Path.home() / ".local" / "share" / "sandboxer"
        ).expanduser()
        urls = tuple(
            u.strip() for u in os.environ.get("SANDBOXER_NATS_URL", "").split(",") if u.strip()
        )
        return cls(
            home=home,
            nats_urls=urls,
            nats_server=os.environ.get("SANDBOXER_NATS_SERVER") or None,
            ack_wait=_float_env("SANDBOXER_ACK_WAIT", 30.0),
        )

    @property
    def embedded(self) -> bool:
        return not self.nats_urls

    @property
    def local_root(self) -> Path:
        """Workspaces and state of ext.local sandboxes."""
        return self.home / "local"

    @property
    def db_path(self) -> Path:
        return self.home / "projections.sqlite3"

    @property
    def service_file(self) -> Path:
        """Written by a running ``sandboxer up``: how clients find it."""
        return self.home / "service.json"

    @property
    def log_file(self) -> Path:
        return self.home / "service.log"
