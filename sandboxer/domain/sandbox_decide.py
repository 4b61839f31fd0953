"""The sandbox aggregate's rules: ``decide(state, command, now) -> events``.

Pure. Workers load the state (:mod:`sandboxer.domain.sandbox_state`), call
``decide`` and append what it returns under optimistic concurrency; on a
conflict they reload and decide again. A command the state cannot accept
raises :class:`~sandboxer.errors.Rejected`; a command already decided (same
``command_id``) or a job whose work is already done decides no events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from sandboxer.commands.types import (
    CreateSandbox,
    DestroySandbox,
    ExpireSandbox,
    ExtendTtl,
    PauseSandbox,
    RecreateSandbox,
    ResumeSandbox,
    TouchSandbox,
    consumer_record,
)
from sandboxer.domain.account_state import project_of
from sandboxer.domain.key_access import taken_refusal
from sandboxer.domain.sandbox_lifetime import decide_expire, decide_extend, decide_touch
from sandboxer.domain.sandbox_pause import (
    MarkPaused,
    MarkPauseFailed,
    MarkResumed,
    decide_pause_step,
)
from sandboxer.domain.sandbox_snapshots import FinishSnapshot, StartSnapshot, decide_snapshot_hold
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.errors import Rejected
from sandboxer.events.types import (
    Actor,
    NetworkRecord,
    SandboxCreateAbandoned,
    SandboxDestroyed,
    SandboxDestroying,
    SandboxEvent,
    SandboxFailed,
    SandboxProvisioning,
    SandboxReady,
    SandboxRecreating,
    SandboxRequested,
    SandboxRerouting,
    SandboxRouted,
    SandboxTeardownFailed,
    SetupRecord,
)

__all__ = [
    "AbandonCreate",
    "AdmittedCreate",
    "Attempt",
    "DomainCommand",
    "FinishTeardown",
    "MarkFailed",
    "MarkReady",
    "MarkRerouting",
    "MarkTeardownFailed",
    "Reroute",
    "StartProvisioning",
    "decide",
    "same_project",
    "superseded",
    "taken_over",
]


@dataclass(frozen=True, kw_only=True)
class AdmittedCreate:
    """A create whose profile was found, inputs checked and backend chosen by the control worker."""

    command: CreateSandbox
    sandbox_id: str
    profile_version: int
    inputs: dict[str, str]
    """The command's inputs completed with the profile's defaults."""
    extension: str
    route_reason: str
    candidates: list[str] = field(default_factory=list)
    route_scores: list[dict[str, Any]] = field(default_factory=list)
    """Every candidate routing weighed (the ``routed`` event's ``scores``)."""
    host: str | None = None
    ttl_seconds: float | None = None
    ttl_max_seconds: float | None = None
    idle_reap_seconds: float | None = None
    restored_from: str | None = None
    """For a restore: the snapshot whose object is the directory input."""
    max_pause_seconds: float | None = None
    network: NetworkRecord | None = None
    """The network policy in force: the profile's, or the narrower one the create asked for."""
    provider_key: str | None = None
    """Whose key the provider is called with, chosen with the create's credits (``routed``)."""


@dataclass(frozen=True)
class Attempt:
    """Which provisioning a worker runs: the sandbox's backend, generation and attempt when
    its ``provisioning`` was appended. A later one (the job redelivered to another worker
    while this one was frozen or slow, a reroute, a recreate) takes the sandbox from it: the
    outcome this one reports then decides nothing, and it leaves alone what the later one
    makes (``superseded``)."""

    extension: str | None
    generation: int
    attempt: int

    @classmethod
    def of(cls, state: SandboxState) -> Attempt:
        return cls(state.extension, state.generation, state.attempt)


STARTING = frozenset({"routed", "recreating", "provisioning"})
"""Where a provision or recreate job may start, or go on with, a provisioning."""


def job_current(state: SandboxState, extension: str) -> bool:
    """Whether a provision or recreate job of ``extension`` may still be the sandbox's work:
    the sandbox waits for a provisioning on that backend or is in one. A job of another
    backend (a reroute moved the sandbox) or one the sandbox is past (ready, failed,
    destroying: a stale copy, redelivered or sent again) is not."""
    return state.status in STARTING and state.extension == extension


def superseded(state: SandboxState, attempt: Attempt | None) -> bool:
    """Whether a later provisioning than ``attempt`` has the sandbox (None: no attempt)."""
    return attempt is not None and Attempt.of(state) != attempt


def taken_over(state: SandboxState, attempt: Attempt) -> bool:
    """Whether a later provisioning on the same backend has the sandbox, so that what is
    there is its own, not ``attempt``'s to tear down: a later attempt of the generation
    started clean over what ``attempt`` made, and a later generation's job (a recreate) tore
    the sandbox down before it provisioned it again. A reroute (another backend) supersedes
    an attempt too, but leaves what the attempt made in its backend to it.

    A recreate keeps the backend and the host, so the same backend means the same place.
    What a frozen attempt makes after the recreate's teardown is cleaned by a backend that
    starts clean over an earlier generation (ext.local) and otherwise stays until the
    sandbox's teardown, which removes everything under its id."""
    return state.extension == attempt.extension and (state.generation, state.attempt) > (
        attempt.generation,
        attempt.attempt,
    )


@dataclass(frozen=True, kw_only=True)
class StartProvisioning:
    """An extension worker picked up the provision (or recreate) job."""

    job_id: str
    worker: str
    extension: str | None = None
    """The backend of the worker that took the job. A job of a backend the sandbox is no
    longer routed to (the refuser's provision job, redelivered or sent again after the
    reroute) starts nothing: that worker would provision on its own backend while the log
    names the other one. None (a caller that does not say) is not checked."""


@dataclass(frozen=True, kw_only=True)
class MarkReady:
    job_id: str
    reachability: dict[str, Any]
    warnings: list[str]
    setup: list[SetupRecord] = field(default_factory=list)
    """The profile's setup commands as they ran (redacted output tails)."""
    pool_member: str | None = None
    """The warm pool member the sandbox was claimed from, if it was."""
    attempt: Attempt | None = None
    """The provisioning that made it: a later one's sandbox is not this outcome's."""


@dataclass(frozen=True, kw_only=True)
class MarkFailed:
    job_id: str
    reason: str
    stage: Literal["provision", "wait_ready", "teardown", "job"]
    retryable: bool = False
    code: str | None = None
    attempt: Attempt | None = None
    """The provisioning that failed, when a provisioning did: a later one may yet succeed."""
    job_of: str | None = None
    """The backend whose provision or recreate job gave up: the sandbox fails only while that
    job is still its work (:func:`job_current`). None: a failure found on the sandbox itself."""


@dataclass(frozen=True, kw_only=True)
class MarkRerouting:
    """The backend refused the provision in a way another backend may not; it tore down
    what it made. The control worker routes the next candidate (or fails the sandbox)."""

    job_id: str
    extension: str
    reason: str
    code: str | None = None
    attempt: Attempt | None = None
    """The provisioning the backend refused."""


@dataclass(frozen=True, kw_only=True)
class Reroute:
    """The control worker's fallback decision for a ``rerouting`` sandbox: the next backend
    (``extension`` None when no candidate is left, which fails the sandbox)."""

    command_id: str
    extension: str | None
    reason: str
    host: str | None = None
    candidates: list[str] = field(default_factory=list)
    scores: list[dict[str, Any]] = field(default_factory=list)
    provider_key: str | None = None
    """Whose key the next backend is called with, chosen with its reservation (``routed``)."""


@dataclass(frozen=True, kw_only=True)
class AbandonCreate:
    """Give up the sandbox id of a create refused after it held credits for it, before its
    hold is given back: from then on no create of the id is made, so nothing can be
    appended on a hold that is gone (workers/credit_reservation.py). ``command_id`` and
    ``actor``: the create's (or restore's)."""

    command_id: str
    actor: Actor
    code: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class FinishTeardown:
    job_id: str


@dataclass(frozen=True, kw_only=True)
class MarkTeardownFailed:
    """Teardown failed for good (its job ran out of deliveries): record why."""

    job_id: str
    reason: str


DomainCommand = (
    AdmittedCreate
    | AbandonCreate
    | DestroySandbox
    | RecreateSandbox
    | StartProvisioning
    | MarkReady
    | MarkFailed
    | MarkRerouting
    | Reroute
    | FinishTeardown
    | MarkTeardownFailed
    | ExtendTtl
    | TouchSandbox
    | ExpireSandbox
    | StartSnapshot
    | FinishSnapshot
    | PauseSandbox
    | ResumeSandbox
    | MarkPaused
    | MarkResumed
    | MarkPauseFailed
)


def decide(  # noqa: PLR0912 (a flat dispatch: one case per command reads best)
    state: SandboxState, command: DomainCommand, now: str
) -> list[SandboxEvent]:
    """The events ``command`` produces in ``state``; raises Rejected when it is not acceptable."""
    match command:
        case AdmittedCreate():
            return _decide_create(state, command, now)
        case AbandonCreate():
            return _decide_abandon(state, command, now)
        case DestroySandbox():
            return _decide_destroy(state, command, now)
        case RecreateSandbox():
            return _decide_recreate(state, command, now)
        case ExtendTtl() | TouchSandbox() | ExpireSandbox():
            return _decide_lifetime(state, command, now)
        case StartSnapshot() | FinishSnapshot():
            return decide_snapshot_hold(state, command, now)
        case PauseSandbox() | ResumeSandbox() | MarkPaused() | MarkResumed() | MarkPauseFailed():
            return decide_pause_step(state, command, now)
        case StartProvisioning():
            return _decide_start(state, command, now)
        case MarkReady():
            return _decide_ready(state, command, now)
        case MarkRerouting() | Reroute():
            return _decide_fallback(state, command, now)
        case MarkFailed():
            if superseded(state, command.attempt):
                return []  # a later provisioning has the sandbox
            if command.job_of is not None and not job_current(state, command.job_of):
                return []  # a stale job's: another backend has the sandbox, or it is past it
            if state.status not in {
                "routed",
                "provisioning",
                "recreating",
                "ready",
                "active",
                "pausing",
                "paused",
                "resuming",
            }:
                return []
            return [
                SandboxFailed(
                    **_common(state, now, command.job_id),
                    reason=command.reason,
                    stage=command.stage,
                    retryable=command.retryable,
                    code=command.code,
                )
            ]
        case FinishTeardown():
            if state.status != "destroying":
                return []
            return [SandboxDestroyed(**_common(state, now, command.job_id))]
        case MarkTeardownFailed():
            if state.status != "destroying" or state.teardown_failure == command.reason:
                return []
            return [
                SandboxTeardownFailed(**_common(state, now, command.job_id), reason=command.reason)
            ]


def _decide_ready(state: SandboxState, command: MarkReady, now: str) -> list[SandboxEvent]:
    if state.status != "provisioning" or superseded(state, command.attempt):
        return []
    return [
        SandboxReady(
            **_common(state, now, command.job_id),
            reachability=command.reachability,
            warnings=command.warnings,
            generation=state.generation,
            network=state.network,
            setup=command.setup,
            pool_member=command.pool_member,
        )
    ]


def _decide_fallback(
    state: SandboxState, command: MarkRerouting | Reroute, now: str
) -> list[SandboxEvent]:
    """A refused provision goes to the next candidate; never to two backends at once."""
    match command:
        case MarkRerouting():
            if (
                state.status != "provisioning"
                or state.extension != command.extension
                or superseded(state, command.attempt)
            ):
                return []  # a destroy overtook it, or this job's outcome is already recorded
            return [
                SandboxRerouting(
                    **_common(state, now, command.job_id),
                    extension=command.extension,
                    reason=command.reason,
                    code=command.code,
                )
            ]
        case Reroute():
            if command.command_id in state.handled:
                return []
            if state.status != "rerouting":
                raise Rejected(
                    "not_rerouting",
                    f"sandbox {state.sandbox_id} is {state.status}; only a sandbox whose "
                    "backend refused it (rerouting) is routed again",
                )
            if command.extension is None:
                # Correlated to the create, whose waiting client takes this as its outcome.
                return [
                    SandboxFailed(
                        **_common(state, now, command.command_id),
                        reason=command.reason,
                        stage="routing",
                        retryable=True,
                        code="no_route",
                    )
                ]
            assert state.actor is not None
            return [
                SandboxRouted(
                    # The reroute's own id, so a repeat of it decides nothing (``handled``);
                    # the jobs that follow are correlated to the create again.
                    sandbox_id=state.sandbox_id,
                    command_id=command.command_id,
                    actor=state.actor,
                    at=now,
                    extension=command.extension,
                    reason=command.reason,
                    candidates=command.candidates,
                    scores=command.scores,
                    host=command.host,
                    provider_key=command.provider_key,
                )
            ]


def _decide_lifetime(
    state: SandboxState, command: ExtendTtl | TouchSandbox | ExpireSandbox, now: str
) -> list[SandboxEvent]:
    match command:
        case ExtendTtl():
            return decide_extend(state, command, now)
        case TouchSandbox():
            return decide_touch(state, command, now)
        case ExpireSandbox():
            return decide_expire(state, command, now)


def _common(state: SandboxState, now: str, causation: str | None = None) -> dict[str, Any]:
    """Fields every event of a job carries: correlated to the command that created the work."""
    assert state.correlation is not None
    assert state.actor is not None
    return {
        "sandbox_id": state.sandbox_id,
        "command_id": state.correlation,
        "causation_id": causation,
        "actor": state.actor,
        "at": now,
    }


def _decide_abandon(state: SandboxState, abandon: AbandonCreate, now: str) -> list[SandboxEvent]:
    """Only an id nothing was appended for is given up, once: a sandbox that was requested
    (by this create or any other) keeps its hold, which its metering releases."""
    if state.status != "new" or state.abandoned_by is not None:
        return []
    return [
        SandboxCreateAbandoned(
            sandbox_id=state.sandbox_id,
            command_id=abandon.command_id,
            actor=abandon.actor,
            at=now,
            code=abandon.code,
            reason=abandon.reason,
        )
    ]


def _decide_create(state: SandboxState, admitted: AdmittedCreate, now: str) -> list[SandboxEvent]:
    command = admitted.command
    if state.abandoned_by is not None:
        # A create refused after its credit hold gave the id up, and its hold back: no
        # create of the id is made now (on no hold). Told as a taken id, whoever sends it
        # (that create was told its own refusal; command ids are one namespace).
        raise Rejected(*taken_refusal(admitted.sandbox_id))
    if command.command_id in state.handled and same_project(state, command.actor):
        # A crash between the two appends leaves `requested` alone: complete it.
        return [_routed(admitted, now)] if state.status == "requested" else []
    if state.status != "new":
        # Nothing of the sandbox is told (not its status): it may be another project's.
        raise Rejected(*taken_refusal(admitted.sandbox_id))
    head: dict[str, Any] = {
        "sandbox_id": admitted.sandbox_id,
        "command_id": command.command_id,
        "actor": command.actor,
        "at": now,
    }
    return [
        SandboxRequested(
            **head,
            profile=command.profile,
            profile_version=admitted.profile_version,
            inputs=admitted.inputs,
            ttl_seconds=admitted.ttl_seconds,
            ttl_max_seconds=admitted.ttl_max_seconds,
            idle_reap_seconds=admitted.idle_reap_seconds,
            restored_from=admitted.restored_from,
            max_pause_seconds=admitted.max_pause_seconds,
            network=admitted.network,
            consumer=consumer_record(command.consumer),
        ),
        _routed(admitted, now),
    ]


def same_project(state: SandboxState, actor: Actor | None) -> bool:
    """Whether a create of ``actor`` may be the create that made ``state``, sent again. Command ids are
    the clients' choice and one namespace across projects: another project's create under
    this sandbox's create's id (a gateway key's ``Idempotency-Key``, past the bus's
    two-minute duplicate window) is not that create sent again. Taken for it, it decided
    nothing and left the hold it made on its own account for ever."""
    return project_of(state.actor) == project_of(actor)


def _routed(admitted: AdmittedCreate, now: str) -> SandboxRouted:
    return SandboxRouted(
        sandbox_id=admitted.sandbox_id,
        command_id=admitted.command.command_id,
        actor=admitted.command.actor,
        at=now,
        extension=admitted.extension,
        reason=admitted.route_reason,
        candidates=admitted.candidates,
        host=admitted.host,
        scores=admitted.route_scores,
        provider_key=admitted.provider_key,
    )


def _require_known(state: SandboxState) -> None:
    if state.status == "new":
        raise Rejected(
            "unknown_sandbox",
            f"no sandbox {state.sandbox_id}; 'sandboxer list' shows the existing ones",
        )


def _decide_destroy(state: SandboxState, command: DestroySandbox, now: str) -> list[SandboxEvent]:
    if command.command_id in state.handled:
        return []
    _require_known(state)
    if state.status == "destroying" and state.teardown_failure is None:
        return []  # the control worker publishes the teardown job again: a retry, not an error
    if state.status == "destroyed":
        raise Rejected("already_destroyed", f"sandbox {command.sandbox_id} is already destroyed")
    return [
        SandboxDestroying(
            sandbox_id=state.sandbox_id,
            command_id=command.command_id,
            actor=command.actor,
            at=now,
            # A stuck teardown is tried again, and this destroy now owns its outcome.
            reason="requested" if state.status != "destroying" else "retry after teardown failed",
        )
    ]


def _decide_recreate(state: SandboxState, command: RecreateSandbox, now: str) -> list[SandboxEvent]:
    if command.command_id in state.handled:
        return []
    _require_known(state)
    if state.status not in {"ready", "active", "failed"}:
        raise Rejected(
            "not_recreatable",
            f"sandbox {command.sandbox_id} is {state.status}; "
            "recreate applies to a ready, active or failed sandbox",
        )
    if state.snapshotting is not None:
        # A recreate tears the workspace down: it waits for the copy, like a destroy's teardown.
        raise Rejected(
            "snapshot_in_progress",
            f"sandbox {command.sandbox_id} is being snapshotted ({state.snapshotting}); "
            "recreate it once that snapshot is created or failed",
        )
    return [
        SandboxRecreating(
            sandbox_id=state.sandbox_id,
            command_id=command.command_id,
            actor=command.actor,
            at=now,
        )
    ]


def _decide_start(state: SandboxState, command: StartProvisioning, now: str) -> list[SandboxEvent]:
    if state.status not in STARTING:
        return []
    if command.extension is not None and not job_current(state, command.extension):
        return []  # another backend's job (a reroute moved the sandbox): not this worker's
    assert state.extension is not None
    fresh = state.status != "provisioning"
    # A fallback's provision (routed again after a refusal) makes the same generation.
    new_generation = fresh and not (state.status == "routed" and state.refused_by)
    return [
        SandboxProvisioning(
            **_common(state, now, command.job_id),
            extension=state.extension,
            attempt=1 if fresh else state.attempt + 1,
            generation=state.generation + 1 if new_generation else state.generation,
            worker=command.worker,
        )
    ]
