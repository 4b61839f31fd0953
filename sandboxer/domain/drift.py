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

The log's status speaks of the sandbox where the log places it (``extension``,
and ``host`` for a backend on hosts). A backend may also hold a **copy** of a
sandbox the log places elsewhere: a create that landed after the backend gave
it up and the sandbox was rerouted, or what a failed cleanup missed. Such a
copy is an orphan whatever the status says (:func:`placed_elsewhere`), and
the worker's start removes it without a word to the sandbox's log
(:func:`reconcile_step`): the sandbox is the other backend's now. A copy is
known by the backend's own mark on it (a label, a marker); a hosted sandbox
made before its labels named its backend (``unmarked``) may be another
declaration's on the same account, so it is judged only where the log places
it on this backend (:func:`claimed`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from sandboxer.domain.found import FoundSandbox
from sandboxer.domain.sandbox_state import SandboxState

__all__ = [
    "Drift",
    "ReconcileStep",
    "claimed",
    "corpse_reason",
    "find_drift",
    "placed_elsewhere",
    "reconcile_step",
]

ORPHAN_STATUSES = frozenset({"new", "destroyed", "failed"})
USABLE_STATUSES = frozenset({"ready", "active", "pausing", "paused", "resuming"})
"""The log says the sandbox runs (``active``: ready and used since; ``paused``: frozen, its
processes still there)."""


@dataclass(frozen=True)
class Drift:
    orphans: list[FoundSandbox] = field(default_factory=list)
    ghosts: list[str] = field(default_factory=list)
    corpses: list[FoundSandbox] = field(default_factory=list)
    placed_on: Mapping[str, str] = field(default_factory=dict)
    """Orphan id -> where the log places that sandbox, for an orphan that is a copy left
    here of a sandbox living elsewhere."""

    def to_dict(self) -> dict[str, object]:
        return {
            "orphans": [
                {**_found_dict(o), "placed_on": self.placed_on[o.sandbox_id]}
                if o.sandbox_id in self.placed_on
                else _found_dict(o)
                for o in self.orphans
            ],
            "ghosts": list(self.ghosts),
            "corpses": [{**_found_dict(c), "reason": corpse_reason(c)} for c in self.corpses],
        }


def _found_dict(found: FoundSandbox) -> dict[str, object]:
    said: dict[str, object] = {
        "sandbox_id": found.sandbox_id,
        "host": found.host,
        "alive": found.alive,
        "detail": found.detail,
    }
    if found.leftover:  # optional: present only when set
        said["leftover"] = True
    return said


def find_drift(
    found: Sequence[FoundSandbox],
    log_status: Mapping[str, str],
    log_ready: Sequence[str],
    placed_on: Mapping[str, str] | None = None,
) -> Drift:
    """``found``: what the hosts hold; ``log_status``: the log's status of each found id
    (``new`` when unknown); ``log_ready``: ids the log calls ready on these hosts;
    ``placed_on``: found ids the log places elsewhere (:func:`placed_elsewhere`), each
    with where: copies left here, orphans whatever their status."""
    elsewhere = placed_on or {}

    def status(item: FoundSandbox) -> str:
        return log_status.get(item.sandbox_id, "new")

    orphans = [f for f in found if f.sandbox_id in elsewhere or status(f) in ORPHAN_STATUSES]
    corpses = [
        f
        for f in found
        if f.sandbox_id not in elsewhere and not f.alive and status(f) in USABLE_STATUSES
    ]
    present = {f.sandbox_id for f in found}
    ghosts = sorted(sandbox_id for sandbox_id in log_ready if sandbox_id not in present)
    return Drift(orphans=orphans, ghosts=ghosts, corpses=corpses, placed_on=dict(elsewhere))


def claimed(found: FoundSandbox, extension: str, state: SandboxState) -> bool:
    """Whether ``found``, listed by ``extension``, is its own to judge: always when the
    backend's mark says so; an unmarked one only when the log places it on ``extension``
    (never another's, as a copy or an orphan: it may be what another declaration on the
    same account made before the label)."""
    return not found.unmarked or state.extension == extension


def placed_elsewhere(found: FoundSandbox, extension: str, state: SandboxState) -> str | None:
    """Where the log places the sandbox that ``extension`` found as ``found``, when that is
    another backend or another host (``ext.x``, ``ext.x on host2``); None when the log
    places it here, or nowhere (it never heard of it, or recorded no host: a sandbox made
    before hosts were recorded is looked for on every host)."""
    if state.extension is None or (
        state.extension == extension
        and (state.host is None or found.host is None or state.host == found.host)
    ):
        return None
    return f"{state.extension} on {state.host}" if state.host else state.extension


ReconcileStep = Literal[
    "adopt", "fail", "finish_teardown", "remove", "remove_copy", "unknown", "leave"
]
"""What a worker's start does with a sandbox its backend holds (``ExtensionWorker.reconcile``):

- ``adopt``: live, and the log calls it usable here: kept as it is (not duplicated);
- ``fail``: the log calls it usable here, but its processes died: torn down, marked failed;
- ``finish_teardown``: its teardown was interrupted: torn down, ``destroyed`` recorded;
- ``remove``: the log has it failed or destroyed: torn down, nothing recorded;
- ``remove_copy``: the log places it elsewhere: this copy is torn down, and nothing is
  recorded (the sandbox's log speaks of the other backend's);
- ``unknown``: the log never heard of it: reported (``reap-stale`` removes it);
- ``leave``: a job is on it (provisioning, recreating, snapshotting...)."""


def reconcile_step(found: FoundSandbox, extension: str, state: SandboxState) -> ReconcileStep:
    """The step for ``found``, held by ``extension``, whose log says ``state``."""
    if placed_elsewhere(found, extension, state) is not None:
        return "remove_copy"
    if state.status in USABLE_STATUSES:
        return "adopt" if found.alive else "fail"
    if state.status == "destroying":
        # One being snapshotted is torn down once its redelivered snapshot job ends.
        return "finish_teardown" if state.snapshotting is None else "leave"
    if state.status in {"failed", "destroyed"}:
        return "remove"
    return "unknown" if state.status == "new" else "leave"


def corpse_reason(found: FoundSandbox) -> str:
    """Why a found sandbox is not alive, in words: the backend's own ``dead`` detail when it
    gave one, else a general sentence."""
    said = found.detail.get("dead")
    where = f" on {found.host}" if found.host else ""
    if isinstance(said, str) and said:
        return f"{said}{where}"
    return f"what is left of it{where} is not alive"
