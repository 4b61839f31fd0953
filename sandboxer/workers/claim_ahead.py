"""A warm create's `provisioning`, its member's `claimed` and its `ready`, in one write.

A create served by a warm pool was four round trips in a row: the command; `requested`,
`routed` and the job; `provisioning` beside `claimed`; `ready`. Nothing in the contract asks
for the last of them: a claimed member is ready as soon as it is the sandbox. So for a
claim with nothing to apply (no inputs, secrets, setup instructions or commands, no telemetry
recorded first), the extension worker moves the member under the sandbox's name first, both
locks held (:meth:`~sandboxer.extensions.local.backend.LocalExtension.claim_ahead`), and then
sends the three events at once: `claimed` expecting `provisioning` as the stream's last
message, `ready` expecting `claimed` (``Nats-Expected-Last-Msg-Id``, as a decision's events
go: bus/jetstream_store.py). `ready` therefore lands only right after `claimed`, and `claimed`
only right after `provisioning`. Measured on the skeleton chain, 0.46 to 0.57 ms less a
create (docs/performance.md, "The last round trip").

What a refusal leaves:
- `provisioning` refused (the sandbox moved on): none landed; the member is moved back and
  the job goes the usual way, which reads the log;
- `claimed` refused (the member claimed or drained meanwhile, or another writer's message
  between the two): the member is moved back, and the usual claim follows the
  `provisioning` that landed;
- `ready` alone refused (another writer's message between, or the guessed position of
  `provisioning` wrong): the claim stands, and the usual path appends `ready` in turn.
- no answer at all: what landed is unknown, so the member stays under the sandbox's name
  and the error goes up; the job comes again, and its claim adopts the member, or removes
  it and claims another (``LocalExtension._take``), as after a crash at that moment.

Only where the store may send appends that name the event before them without waiting for
it (``EventStore.chain_position``: an events stream of one copy); elsewhere, and for every
other create, the usual path runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Protocol, cast

from nats.aio.msg import Msg

from sandboxer.bus.event_store import EventStore, Loaded, LoadedMember, stamp
from sandboxer.clock import utc_now
from sandboxer.config.profile import Profile
from sandboxer.domain.sandbox_decide import Attempt, MarkReady, StartProvisioning, decide
from sandboxer.domain.sandbox_state import SandboxState, fold_on
from sandboxer.errors import ConcurrencyConflict, Rejected, SandboxerError
from sandboxer.events.types import PoolEvent, SandboxEvent
from sandboxer.extensions.base import Extension, ProvisionRequest, Readiness
from sandboxer.extensions.capabilities import ClaimsAhead
from sandboxer.workers import deciding
from sandboxer.workers.jobs import Job
from sandboxer.workers.setup_step import workspace_access_warning

__all__ = ["Ahead", "MemberPicker", "has_nothing_to_apply", "ready_in_one_write"]


@dataclass(frozen=True)
class Ahead:
    """What landed of the three, when any did."""

    started: Loaded
    """The sandbox after its `provisioning` (and its `ready`, when :attr:`ready`)."""
    member_id: str | None = None
    """The member claimed on record and now the sandbox, when `claimed` landed."""
    ready: bool = False


def has_nothing_to_apply(profile: Profile, inputs: dict[str, str]) -> bool:
    """Whether a claim of ``profile`` for a create with ``inputs`` only moves the member."""
    setup = profile.setup
    return not (
        inputs
        or setup.commands
        or setup.instructions
        or setup.instructions_ref
        or setup.secret_refs
        or setup.record_telemetry
    )


class MemberPicker(Protocol):
    """Who hands out a pool member for a claim the caller sends (the pool keeper)."""

    def pick(
        self, profile: Profile, sandbox_id: str, job_id: str
    ) -> tuple[LoadedMember, list[PoolEvent]] | None: ...

    def unpick(self, member_id: str, claimed: LoadedMember | None) -> None: ...


@dataclass(frozen=True)
class _Plan:
    """The three appends, decided on the job's state and the keeper's member."""

    known: Loaded
    provisioning: list[SandboxEvent]
    started: SandboxState
    member: LoadedMember
    claim: list[PoolEvent]
    request: ProvisionRequest
    position: int
    """Where `provisioning` is guessed to land: what `ready` expects as the sandbox's last."""


Landed = list[Loaded | LoadedMember | BaseException]


async def ready_in_one_write(
    store: EventStore,
    pools: MemberPicker,
    backend: Extension,
    job: Job,
    msg: Msg,
    known: Loaded,
    profile: Profile,
    *,
    worker: str,
) -> Ahead | None:
    """Send ``job``'s `provisioning`, a member's `claimed` and `ready` in one write; what
    landed, or None when nothing did (the usual path then runs from the start)."""
    state = known.state
    if (
        not isinstance(backend, ClaimsAhead)
        or msg.metadata.num_delivered != 1
        or not has_nothing_to_apply(profile, dict(state.inputs))
    ):
        return None
    async with deciding.sandbox_turn(job.sandbox_id):
        plan = await _plan(store, pools, backend.id, job, known, profile, worker)
        if plan is None:
            return None
        member_id = plan.member.state.member_id
        landed: Landed = []
        try:
            landed = await _moved_and_sent(store, backend, job, plan)
        finally:
            claimed = landed[1] if len(landed) > 1 else None
            pools.unpick(member_id, claimed if isinstance(claimed, LoadedMember) else None)
    return _what_landed(landed, member_id)


async def _plan(
    store: EventStore,
    pools: MemberPicker,
    extension: str,
    job: Job,
    known: Loaded,
    profile: Profile,
    worker: str,
) -> _Plan | None:
    position = await store.chain_position()
    if position is None:
        return None
    state = known.state
    try:
        provisioning = decide(
            state,
            StartProvisioning(job_id=job.job_id, worker=worker, extension=extension),
            utc_now(),
        )
    except Rejected:
        return None  # on a state the log may have moved past: the usual path reads it
    started = fold_on(state, provisioning)
    if len(provisioning) != 1 or started.generation != 1 or started.attempt != 1:
        return None  # a create's first provisioning only: a recreate or retry goes as it did
    picked = pools.pick(profile, job.sandbox_id, job.job_id)
    if picked is None:
        return None
    member, claim = picked
    request = ProvisionRequest.of(started, profile, {})
    return _Plan(known, provisioning, started, member, claim, request, position)


async def _moved_and_sent(store: EventStore, backend: Extension, job: Job, plan: _Plan) -> Landed:
    """The member moved, the three sent, and what each came to; [] when nothing was sent.
    The member goes back to the pool when `provisioning` or `claimed` was refused; when the
    fate of either is unknown, it stays the sandbox's, and the error goes up."""
    member_id = plan.member.state.member_id
    warning = workspace_access_warning(backend, plan.request.profile.workspace.access)
    assert isinstance(backend, ClaimsAhead)  # checked by the caller
    unknown: BaseException | None = None
    try:
        async with backend.claim_ahead(member_id, plan.request) as ahead:
            try:
                sends = _sends(store, job, plan, ahead.readiness, warning)
            except BaseException:
                ahead.give_back()  # nothing sent
                raise
            landed = cast(Landed, list(await asyncio.gather(*sends, return_exceptions=True)))
            if not isinstance(landed[1], LoadedMember):
                if _unanswered(landed[0]) or _unanswered(landed[1]):
                    unknown = _first_error(landed)
                else:
                    ahead.give_back()
    except SandboxerError:
        # Nothing sent: the member dead or gone (the keeper removes it), or something of an
        # earlier attempt under the sandbox's name; the usual path deals with either.
        return []
    if unknown is not None:
        raise unknown
    return landed


def _sends(
    store: EventStore,
    job: Job,
    plan: _Plan,
    readiness: Readiness,
    warning: str | None,
) -> list[asyncio.Future[Loaded | LoadedMember]]:
    """The three appends, started in this order: each sends before its first wait, so the
    connection carries them in this order, in one write."""
    member_id = plan.member.state.member_id
    ready = decide(
        plan.started,
        MarkReady(
            job_id=job.job_id,
            reachability=readiness.descriptor,
            warnings=[*readiness.warnings, *([warning] if warning else [])],
            pool_member=member_id,
            attempt=Attempt.of(plan.started),
        ),
        utc_now(),
    )
    after_provisioning = stamp(plan.provisioning[0], version=plan.known.state.version)
    after_claim = stamp(plan.claim[0], version=plan.member.state.version)
    return [
        asyncio.ensure_future(store.append(plan.known, plan.provisioning)),
        asyncio.ensure_future(
            store.append_member(
                dataclasses.replace(plan.member, unconfirmed=after_provisioning.event_id),
                plan.claim,
            )
        ),
        asyncio.ensure_future(
            store.append(
                Loaded(plan.started, plan.position, unconfirmed=after_claim.event_id), ready
            )
        ),
    ]


def _what_landed(landed: Landed, member_id: str) -> Ahead | None:
    if not landed:
        return None
    first, claimed, ready = landed
    if not isinstance(first, Loaded):
        if _unanswered(first):
            raise _first_error(landed)
        return None  # `provisioning` refused: nothing landed
    if not isinstance(claimed, LoadedMember):
        return Ahead(first)
    if isinstance(ready, Loaded):
        return Ahead(ready, member_id, ready=True)
    if _unanswered(ready):
        raise _first_error([ready])
    return Ahead(first, member_id)


def _unanswered(outcome: object) -> bool:
    """An append whose fate is unknown: it failed, but not on an expectation."""
    return isinstance(outcome, BaseException) and not isinstance(outcome, ConcurrencyConflict)


def _first_error(landed: Landed) -> BaseException:
    return next(outcome for outcome in landed if isinstance(outcome, BaseException))
