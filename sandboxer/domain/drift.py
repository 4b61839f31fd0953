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

A hosted backend may also hold a **stale copy** of a sandbox it does hold live: a provider
sandbox an earlier provisioning attempt made, landing after the later attempt's ``ready``
(a killed worker's create, slower than the job's redelivery). Each carries the attempt that
made it (``FoundSandbox.made_by``), and the log orders attempts: only the latest one's
``ready`` is recorded, so while the log calls the sandbox usable, one labelled with an
earlier attempt is not the sandbox the log names (:func:`earlier_attempt`). It is an
orphan, costing money at the provider beside the live one; the worker's start and
``reap-stale`` remove it through the backend's attempt-scoped teardown, which never reaches
the later attempt's. One without the label is never judged so: the live one may be such.

A backend that pauses may also hold a live sandbox **not as paused as the log says**:
running while the log says ``paused`` (a pause job's late failure undone, and the undo that
should freeze it again failing in turn), or frozen (stopped) while the log says it runs (a
provider's stop that landed after its pause gave up); or frozen in part (a compose pause
cut short between containers). A user's sandbox then hangs, or runs while its TTL clock
stands still. Such a sandbox is frozen or thawed to match the log (``freeze``, ``thaw``:
:data:`MATCH_STEPS`); not while it is ``pausing`` or ``resuming``, which its job settles.
A report lists it as **unmatched**.

While a worker runs, its **leak sweep** takes again, every few minutes, only the steps that
remove what no live sandbox of the log is (:data:`LEAK_STEPS`) and those that set a live one
as paused as its log says (:data:`MATCH_STEPS`; :func:`sweep_step`): the others decide about
a sandbox a job may have in hand right now, on this worker or another.

Each side is read at its own moment, and the log moves on meanwhile. ``reap-stale`` reads
the log's usable sandboxes before it lists the backend, so that a sandbox made ready after
the listing is no ghost; and right before it acts on what it judged, it reads the sandbox's
log again and acts only if the judgement still holds (:func:`reap_agrees`: a sandbox
recreated, destroyed or failed since is judged again by the next reap).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from sandboxer.domain.found import FoundSandbox, Frozen, MadeBy
from sandboxer.domain.sandbox_state import SandboxState

__all__ = [
    "LEAK_STEPS",
    "MATCH_STEPS",
    "Drift",
    "ReconcileStep",
    "Unmatched",
    "claimed",
    "corpse_reason",
    "earlier_attempt",
    "find_drift",
    "live_attempt",
    "pause_step",
    "placed_elsewhere",
    "reap_agrees",
    "reconcile_step",
    "removal_scope",
    "step_for",
    "sweep_step",
    "usable_as_judged",
]

ORPHAN_STATUSES = frozenset({"new", "destroyed", "failed"})
USABLE_STATUSES = frozenset({"ready", "active", "pausing", "paused", "resuming"})
"""The log says the sandbox runs (``active``: ready and used since; ``paused``: frozen, its
processes still there)."""
FROZEN_WANTED: dict[str, Frozen] = {"ready": "none", "active": "none", "paused": "all"}
"""How much of a usable sandbox the log wants frozen; not said while a job is pausing or
resuming it."""


@dataclass(frozen=True)
class Unmatched:
    """A live sandbox not as paused as its log says, and the step that sets it so."""

    found: FoundSandbox
    status: str
    """What the log says of it."""
    step: Literal["freeze", "thaw"]

    def to_dict(self) -> dict[str, object]:
        return {
            "sandbox_id": self.found.sandbox_id,
            "host": self.found.host,
            "status": self.status,
            "frozen": self.found.frozen,
            "step": self.step,
        }


@dataclass(frozen=True)
class Drift:
    orphans: list[FoundSandbox] = field(default_factory=list)
    ghosts: list[str] = field(default_factory=list)
    corpses: list[FoundSandbox] = field(default_factory=list)
    placed_on: Mapping[str, str] = field(default_factory=dict)
    """Orphan id -> where the log places that sandbox, for an orphan that is a copy left
    here of a sandbox living elsewhere."""
    live_attempts: Mapping[str, MadeBy] = field(default_factory=dict)
    """Orphan id -> the provisioning the log's ``ready`` names, for orphans that are stale
    copies an earlier attempt made beside that live sandbox (:func:`earlier_attempt`): each
    is removed with its own attempt's teardown, never the sandbox's."""
    unmatched: list[Unmatched] = field(default_factory=list)
    """Live sandboxes not as paused as the log says (:func:`pause_step`)."""

    def to_dict(self) -> dict[str, object]:
        return {
            "orphans": [self._orphan_dict(o) for o in self.orphans],
            "ghosts": list(self.ghosts),
            "corpses": [{**_found_dict(c), "reason": corpse_reason(c)} for c in self.corpses],
            "unmatched": [u.to_dict() for u in self.unmatched],
        }

    def _orphan_dict(self, orphan: FoundSandbox) -> dict[str, object]:
        said = _found_dict(orphan)
        if orphan.sandbox_id in self.placed_on:
            said["placed_on"] = self.placed_on[orphan.sandbox_id]
        live = self.live_attempts.get(orphan.sandbox_id)
        if live is not None and orphan.made_by is not None:
            said["made_by"] = _attempt_text(orphan.made_by)
            said["live_attempt"] = _attempt_text(live)
        return said


def _attempt_text(made_by: MadeBy) -> str:
    """``<generation>.<attempt>``, as the provider label writes it."""
    return "{}.{}".format(*made_by)


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
    live: Mapping[str, MadeBy] | None = None,
) -> Drift:
    """``found``: what the hosts hold; ``log_status``: the log's status of each found id
    (``new`` when unknown); ``log_ready``: ids the log calls ready on these hosts;
    ``placed_on``: found ids the log places elsewhere (:func:`placed_elsewhere`), each
    with where: copies left here, orphans whatever their status; ``live``: the attempt the
    log's ``ready`` names, for found ids whose earlier attempts' copies may be judged
    (:func:`live_attempt`): those copies are orphans, and not the sandbox (with only such a
    copy left, the sandbox the log names is gone: a ghost)."""
    elsewhere = placed_on or {}
    attempts = live or {}

    def status(item: FoundSandbox) -> str:
        return log_status.get(item.sandbox_id, "new")

    def stale(item: FoundSandbox) -> bool:
        return earlier_attempt(item, attempts.get(item.sandbox_id))

    orphans = [
        f for f in found if f.sandbox_id in elsewhere or status(f) in ORPHAN_STATUSES or stale(f)
    ]
    corpses = [
        f
        for f in found
        if f.sandbox_id not in elsewhere
        and not stale(f)
        and not f.alive
        and status(f) in USABLE_STATUSES
    ]
    unmatched = [
        Unmatched(f, status(f), step)
        for f in found
        if f.sandbox_id not in elsewhere
        and not stale(f)
        and (step := pause_step(f, status(f))) is not None
    ]
    present = {f.sandbox_id for f in found if not stale(f)}
    ghosts = sorted(sandbox_id for sandbox_id in log_ready if sandbox_id not in present)
    copies = {f.sandbox_id: attempts[f.sandbox_id] for f in found if stale(f)}
    return Drift(
        orphans=orphans,
        ghosts=ghosts,
        corpses=corpses,
        placed_on=dict(elsewhere),
        live_attempts=copies,
        unmatched=unmatched,
    )


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


def live_attempt(
    listed: Sequence[FoundSandbox], state: SandboxState, extension: str
) -> MadeBy | None:
    """The provisioning the log's ``ready`` names, by which an earlier attempt's copy is
    told from the live sandbox (:func:`earlier_attempt`); None when nothing of the id is to
    be judged by attempt. ``listed``: every provider sandbox of ``state``'s sandbox that
    ``extension`` listed. Judged only while the log calls the sandbox usable here (one
    being provisioned is its job's to clean, a failed or destroyed one goes whole, one
    placed elsewhere is a copy whatever its label), and only when each of them carries the
    attempt label: one made before the label may be the live one, and an attempt-scoped
    teardown counts it as earlier."""
    if (
        not listed
        or any(item.made_by is None for item in listed)
        or state.status not in USABLE_STATUSES
        or state.attempt < 1
        or any(placed_elsewhere(item, extension, state) is not None for item in listed)
    ):
        return None
    return (state.generation, state.attempt)


def earlier_attempt(found: FoundSandbox, live: MadeBy | None) -> bool:
    """Whether ``found`` is a stale copy: made by a provisioning earlier than ``live``, the
    one the log's ``ready`` names (None: not judged, see :func:`live_attempt`). The log
    records only the latest attempt's ``ready``, so an earlier one's sandbox is no one's;
    a later one's than the log knows is left alone (never the case while the log calls
    the sandbox usable: ``provisioning`` is appended before any create)."""
    return live is not None and found.made_by is not None and found.made_by < live


ReconcileStep = Literal[
    "adopt",
    "fail",
    "freeze",
    "thaw",
    "finish_teardown",
    "remove",
    "remove_copy",
    "remove_earlier_attempt",
    "unknown",
    "leave",
]
"""What a worker's start does with a sandbox its backend holds (``ExtensionWorker.reconcile``):

- ``adopt``: live, and the log calls it usable here: kept as it is (not duplicated);
- ``fail``: the log calls it usable here, but its processes died: torn down, marked failed;
- ``freeze``: the log has it paused, but its processes run (all or some): frozen again,
  nothing recorded;
- ``thaw``: the log has it running (``ready``, ``active``), but it is frozen (all or part):
  thawed, nothing recorded;
- ``finish_teardown``: its teardown was interrupted: torn down, ``destroyed`` recorded;
- ``remove``: the log has it failed or destroyed: torn down, nothing recorded;
- ``remove_copy``: the log places it elsewhere: this copy is torn down, and nothing is
  recorded (the sandbox's log speaks of the other backend's);
- ``remove_earlier_attempt``: an earlier provisioning attempt's copy beside the live
  sandbox (:func:`earlier_attempt`): that attempt's own are torn down (``AttemptScoped``),
  the live one and the log left alone;
- ``unknown``: the log never heard of it: reported (``reap-stale`` removes it);
- ``leave``: a job is on it (provisioning, recreating, snapshotting...)."""


def reconcile_step(
    found: FoundSandbox, extension: str, state: SandboxState, live: MadeBy | None = None
) -> ReconcileStep:
    """The step for ``found``, held by ``extension``, whose log says ``state``; ``live``:
    the attempt the log's ``ready`` names when copies may be judged by attempt
    (:func:`live_attempt`)."""
    if placed_elsewhere(found, extension, state) is not None:
        return "remove_copy"
    if earlier_attempt(found, live):
        # Before the live checks: a dead copy is not the sandbox, whose failure it would mark.
        return "remove_earlier_attempt"
    if state.status in USABLE_STATUSES:
        if not found.alive:
            return "fail"
        return pause_step(found, state.status) or "adopt"
    if state.status == "destroying":
        # One being snapshotted is torn down once its redelivered snapshot job ends.
        return "finish_teardown" if state.snapshotting is None else "leave"
    if state.status in {"failed", "destroyed"}:
        return "remove"
    return "unknown" if state.status == "new" else "leave"


LEAK_STEPS: frozenset[ReconcileStep] = frozenset(
    {"remove", "remove_copy", "remove_earlier_attempt"}
)
"""The steps that remove only what no live sandbox of the log is: a failed or destroyed
sandbox's leftovers, a copy of one the log places elsewhere, an earlier attempt's copy beside
the live one. Each records nothing on the sandbox. The others (``fail``, ``finish_teardown``)
append to its log, and decide what a job in flight decides too."""


def pause_step(found: FoundSandbox, status: str) -> Literal["freeze", "thaw"] | None:
    """The step that sets ``found``, alive, as paused as a log saying ``status`` wants it:
    ``freeze`` for a paused one not all frozen, ``thaw`` for a running one frozen in whole
    or in part; None when it is as wanted, when the backend does not say, or while a job is
    pausing or resuming it (or it is not a live sandbox of the log). The one place that
    takes the step (``PauseJob.match_log``) leaves a thaw of a sandbox past its deadline to
    its expiry: the rule reads no clock."""
    wanted = FROZEN_WANTED.get(status)
    if not found.alive or found.frozen is None or wanted is None or found.frozen == wanted:
        return None
    return "freeze" if wanted == "all" else "thaw"


MATCH_STEPS: frozenset[ReconcileStep] = frozenset({"freeze", "thaw"})
"""The steps that set a live sandbox as paused as its log says, recording nothing: only ever
towards the log, read again right before (a pause or resume decided since is its job's)."""


def sweep_step(
    found: FoundSandbox, extension: str, state: SandboxState, live: MadeBy | None = None
) -> ReconcileStep:
    """The step a running worker's periodic leak sweep takes for ``found`` (arguments as
    :func:`reconcile_step`'s): the start's step when it is one of :data:`LEAK_STEPS` or
    :data:`MATCH_STEPS`, else ``leave`` (a dead sandbox the log calls usable, an interrupted
    teardown and the unknown are left to the next start, ``reap-stale`` and the jobs)."""
    step = reconcile_step(found, extension, state, live)
    return step if step in LEAK_STEPS | MATCH_STEPS else "leave"


def step_for(
    found: FoundSandbox,
    extension: str,
    state: SandboxState,
    listed: Sequence[FoundSandbox],
    *,
    by_attempt: bool,
    step_of: Callable[[FoundSandbox, str, SandboxState, MadeBy | None], ReconcileStep] = (
        reconcile_step
    ),
) -> ReconcileStep:
    """``step_of`` (:func:`reconcile_step` or :func:`sweep_step`) for ``found``, held by
    ``extension``, whose log says ``state``: ``leave`` when it is not ``extension``'s to judge
    (:func:`claimed`). ``listed``: every sandbox of ``found``'s id the backend listed with
    it; ``by_attempt``: whether copies may be judged by attempt (:func:`live_attempt`), only
    where the backend can remove one attempt's alone (``AttemptScoped``). The worker's start
    and leak sweep judge each found sandbox through it, and ``reap-stale`` at its look and
    again right before acting."""
    if not claimed(found, extension, state):
        return "leave"  # perhaps another declaration's, on the same provider account
    live = live_attempt(listed, state, extension) if by_attempt else None
    return step_of(found, extension, state, live)


def usable_as_judged(judged: MadeBy | None, state: SandboxState) -> bool:
    """Whether ``reap-stale`` may still mark failed a sandbox it judged gone or dead (a
    ghost, a corpse) when the log called it usable with provisioning ``judged``, now that
    the log says ``state``: only while the log still calls it usable with that same
    provisioning. A pause or resume since is the same sandbox; a destroy since removes it
    anyway; a recreate since made another sandbox, which the listing never saw (or saw as
    the one before); a failure since is recorded already."""
    return (
        judged is not None
        and state.status in USABLE_STATUSES
        and (state.generation, state.attempt) == judged
    )


def reap_agrees(
    judged: ReconcileStep, made: MadeBy, now: ReconcileStep, state: SandboxState
) -> bool:
    """Whether ``reap-stale`` may still take the step it judged for a found sandbox
    (``judged``, the log then naming provisioning ``made``), now that the log says
    ``state`` and the sandbox's step is ``now`` (:func:`step_for` on the same listing):
    the same step, and for ``fail`` (a corpse: the sandbox the log calls usable) the same
    provisioning too (:func:`usable_as_judged`), since a recreate since is a sandbox the
    listing did not see alive or dead. A removal then goes through :func:`removal_scope`
    on ``state``, which spares a recreate started after this read."""
    return now == judged and (judged != "fail" or usable_as_judged(made, state))


def removal_scope(step: ReconcileStep, found: FoundSandbox, state: SandboxState) -> MadeBy | None:
    """For a removing step, the latest provisioning whose sandboxes it may remove, where the
    backend can tell attempts apart (``AttemptScoped``); None: everything under the id.

    - ``remove_earlier_attempt``: the copy's own attempt (and earlier), never the live one;
    - ``remove``: the attempt the log last recorded (``state``, failed or destroyed here):
      every sandbox made here of this generation and the ones before carries it or an
      earlier one, while a recreate that another worker starts after the log was read is a
      later generation's, and stays;
    - ``remove_copy``: everything (a fallback numbers its attempts from 1 again on the other
      backend, so the log's attempt says nothing of the copies left here)."""
    if step == "remove_earlier_attempt":
        return found.made_by
    if step == "remove":
        return (state.generation, state.attempt)
    return None


def corpse_reason(found: FoundSandbox) -> str:
    """Why a found sandbox is not alive, in words: the backend's own ``dead`` detail when it
    gave one, else a general sentence."""
    said = found.detail.get("dead")
    where = f" on {found.host}" if found.host else ""
    if isinstance(said, str) and said:
        return f"{said}{where}"
    return f"what is left of it{where} is not alive"
