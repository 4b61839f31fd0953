"""Drift between the log and a backend's hosts. Pure: both sides are given as values.

Two kinds:

- **orphans**: the host holds a sandbox the log has destroyed, failed or never
  heard of (its teardown was lost, or something made it behind our back);
- **ghosts**: the log says a sandbox is ready but its host holds nothing for it.

Sandboxes in the middle of a transition (routed, provisioning, recreating,
destroying) are neither: a worker is on them right now.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sandboxer.extensions.base import FoundSandbox

__all__ = ["Drift", "find_drift"]

ORPHAN_STATUSES = frozenset({"new", "destroyed", "failed"})


@dataclass(frozen=True)
class Drift:
    orphans: list[FoundSandbox] = field(default_factory=list)
    ghosts: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "orphans": [
                {"sandbox_id": o.sandbox_id, "host": o.host, "alive": o.alive, "detail": o.detail}
                for o in self.orphans
            ],
            "ghosts": list(self.ghosts),
        }


def find_drift(
    found: Sequence[FoundSandbox],
    log_status: Mapping[str, str],
    log_ready: Sequence[str],
) -> Drift:
    """``found``: what the hosts hold; ``log_status``: the log's status of each found id
    (``new`` when unknown); ``log_ready``: ids the log calls ready on these hosts."""
    orphans = [f for f in found if log_status.get(f.sandbox_id, "new") in ORPHAN_STATUSES]
    present = {f.sandbox_id for f in found}
    ghosts = sorted(sandbox_id for sandbox_id in log_ready if sandbox_id not in present)
    return Drift(orphans=orphans, ghosts=ghosts)
