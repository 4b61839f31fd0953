"""Drift between the log and a backend's hosts. Pure: both sides are given as values.

Three kinds:

- **orphans**: the host holds a sandbox the log has destroyed, failed or never
  heard of (its teardown was lost, or something made it behind our back);
- **ghosts**: the log says a sandbox is ready but its host holds nothing for it;
- **corpses**: the log says a sandbox is ready and its host still holds
  something of it, but nothing alive (a holder that died, a compose project
  whose containers exited or were removed, a VM workspace that was deleted
  while its marker stayed). A user of such a sandbox only meets errors.

Sandboxes in the middle of a transition (routed, provisioning, recreating,
destroying) are none of these: a worker is on them right now.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sandboxer.domain.found import FoundSandbox

__all__ = ["Drift", "corpse_reason", "find_drift"]

ORPHAN_STATUSES = frozenset({"new", "destroyed", "failed"})
USABLE_STATUSES = frozenset({"ready", "active", "pausing", "paused", "resuming"})
"""The log says the sandbox runs (``active``: ready and used since; ``paused``: frozen, its
processes still there)."""


@dataclass(frozen=True)
class Drift:
    orphans: list[FoundSandbox] = field(default_factory=list)
    ghosts: list[str] = field(default_factory=list)
    corpses: list[FoundSandbox] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "orphans": [_found_dict(o) for o in self.orphans],
            "ghosts": list(self.ghosts),
            "corpses": [{**_found_dict(c), "reason": corpse_reason(c)} for c in self.corpses],
        }


def _found_dict(found: FoundSandbox) -> dict[str, object]:
    return {
        "sandbox_id": found.sandbox_id,
        "host": found.host,
        "alive": found.alive,
        "detail": found.detail,
    }


def find_drift(
    found: Sequence[FoundSandbox],
    log_status: Mapping[str, str],
    log_ready: Sequence[str],
) -> Drift:
    """``found``: what the hosts hold; ``log_status``: the log's status of each found id
    (``new`` when unknown); ``log_ready``: ids the log calls ready on these hosts."""
    orphans = [f for f in found if log_status.get(f.sandbox_id, "new") in ORPHAN_STATUSES]
    corpses = [
        f for f in found if not f.alive and log_status.get(f.sandbox_id, "new") in USABLE_STATUSES
    ]
    present = {f.sandbox_id for f in found}
    ghosts = sorted(sandbox_id for sandbox_id in log_ready if sandbox_id not in present)
    return Drift(orphans=orphans, ghosts=ghosts, corpses=corpses)


def corpse_reason(found: FoundSandbox) -> str:
    """Why a found sandbox is not alive, in words: the backend's own ``dead`` detail when it
    gave one, else a general sentence."""
    said = found.detail.get("dead")
    where = f" on {found.host}" if found.host else ""
    if isinstance(said, str) and said:
        return f"{said}{where}"
    return f"what is left of it{where} is not alive"
