"""The extension worker: runs one backend's jobs (provision, recreate, teardown, snapshot).

It appends ``provisioning`` before doing any I/O and ``ready`` or ``failed``
after (the pull loop heartbeats the job meanwhile). Whatever happens, no
half-made sandbox is left: a failure tears down what was made, and a sandbox
destroyed while it was being provisioned is torn down as soon as that is seen.
Every failure is on record: a job that cannot be read becomes a ``rejected``
event, and a teardown that keeps failing a ``teardown_failed`` one. Jobs of
one sandbox are serialised within a process; across processes the event
log's optimistic concurrency keeps them consistent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal
from weakref import WeakValueDictionary

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from sandboxer import subjects
from sandboxer.bus.event_store import EventStore, Loaded
from sandboxer.bus.publish import is_unavailability
from sandboxer.clock import utc_now, utc_text
from sandboxer.config.catalog import Catalog
from sandboxer.config.network_policy import parse_policy
from sandboxer.config.profile import Profile
from sandboxer.domain.bucket_objects import DEFAULT_OBJECT_GRACE
from sandboxer.domain.drift import (
    LEAK_STEPS,
    ReconcileStep,
    placed_elsewhere,
    reconcile_step,
    removal_scope,
    step_for,
    sweep_step,
)
from sandboxer.domain.fallback import has_fallback
from sandboxer.domain.found import FoundSandbox, by_id
from sandboxer.domain.lost_creates import job_orphaned
from sandboxer.domain.sandbox_decide import (
    Attempt,
    DomainCommand,
    FinishTeardown,
    MarkFailed,
    MarkReady,
    MarkRerouting,
    MarkTeardownFailed,
    StartProvisioning,
    job_current,
    taken_over,
)
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.durations import parse_duration
from sandboxer.errors import (
    ConfigError,
    ExtensionError,
    LogBehind,
    ProviderError,
    SandboxerError,
    SandboxNotFound,
)
from sandboxer.events.types import SYSTEM_ACTOR, Actor, CommandRejected, HostReaped
from sandboxer.extensions.base import Extension, ProvisionRequest, Readiness
from sandboxer.extensions.capabilities import AttemptScoped, Pooling, TimeoutKeeper
from sandboxer.secrets import redact, resolve_secrets
from sandboxer.workers import deciding
from sandboxer.workers.backend_for import backend_for, backend_for_id
from sandboxer.workers.claim_ahead import Ahead, ready_in_one_write
from sandboxer.workers.host_events import event_host, inspect_and_record
from sandboxer.workers.job_dispatch import request_reroute
from sandboxer.workers.jobs import Job
from sandboxer.workers.pause_job import PauseJob
from sandboxer.workers.pool_keeper import PoolKeeper
from sandboxer.workers.provider_expiry import follow_expiry
from sandboxer.workers.pull_loop import ConsumerSpec, run_pull_consumer
from sandboxer.workers.scoped_teardown import remove_scoped
from sandboxer.workers.setup_step import run_setup_commands, workspace_access_warning
from sandboxer.workers.snapshot_job import SnapshotJob
from sandboxer.workspaces.limits import ArchiveLimits
from sandboxer.workspaces.materialize import (
    DirectoryInputs,
    directory_input_names,
    staged_names,
)

__all__ = ["ExtensionWorker"]

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 4000
LEAK_SWEEP_ACTOR = Actor(type="atm", id="sandboxer-leak-sweep")
"""Who a leak sweep's ``reaped`` host events name: told apart from ``reap-stale``'s."""


class ExtensionWorker:
    def __init__(
        self,
        js: JetStreamContext,
        store: EventStore,
        catalog: Catalog,
        extension: Extension,
        *,
        ack_wait: float = 5.0,
        directories: DirectoryInputs | None = None,
        pools: PoolKeeper | None = None,
        object_grace: float = DEFAULT_OBJECT_GRACE,
    ) -> None:
        self._js = js
        self._pools = pools
        # Without settings (tests, embedders): no host path is accepted, uploads still work.
        self._directories = directories or DirectoryInputs(
            js,
            roots=(),
            staging_root=Path(tempfile.gettempdir()) / f"sandboxer-staging-{os.getuid()}",
            limits=ArchiveLimits(),
        )
        self._store = store
        self._catalog = catalog
        self.extension = extension
        self._snapshots = SnapshotJob(
            js,
            store,
            extension,
            staging_root=self._directories.staging_root,
            limits=self._directories.limits,
            explain=lambda exc: _reason(exc, {}),
            object_grace=object_grace,
        )
        self._pauses = PauseJob(store, extension, explain=lambda exc: _reason(exc, {}))
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self._locks: WeakValueDictionary[str, asyncio.Lock] = WeakValueDictionary()
        token = subjects.extension_token(extension.id)
        self.spec = ConsumerSpec(
            stream=subjects.JOBS_STREAM,
            durable=f"ext-{token}",
            filter_subject=subjects.jobs_filter(extension.id),
            ack_wait=ack_wait,
        )

    async def run(self, stop: asyncio.Event) -> None:
        await run_pull_consumer(self._js, self.spec, self.handle, self._on_poison, stop)

    async def reconcile(self) -> None:
        """On start, square what the backend holds with what the log says.

        A live sandbox the log calls ready is adopted as it is (not duplicated),
        frozen or thawed first when it is not as paused as the log says;
        one whose teardown or failure cleanup was interrupted is torn down now;
        a ready one whose processes died is marked failed. Sandboxes still
        provisioning are left to their redelivered job. The log's status speaks
        only of a sandbox it places on this backend (and host): a copy of one it
        places elsewhere (rerouted, while this backend's create landed late) is
        torn down, and the sandbox's log left alone, since it is another
        backend's now (:func:`~sandboxer.domain.drift.reconcile_step`). On a
        backend that labels attempts (:class:`AttemptScoped`), a copy an earlier
        provisioning attempt made beside a live sandbox (a killed worker's create
        that landed after the next attempt's ``ready``) is removed with that attempt's
        teardown, which leaves the live one. The snapshot scratch that dead workers
        left goes first. While the worker runs, :meth:`sweep_leaks` takes the removing
        steps, and the freezing and thawing ones, again.
        """
        await self._snapshots.sweep()
        try:
            listed = await self.extension.list_sandboxes()
        except (ConfigError, ExtensionError) as exc:
            # A hosted provider without its key, or down: the worker still starts (its
            # creates fail with this reason); `sandboxer inspect stale` looks again later.
            log.warning("%s: cannot list its sandboxes at start: %s", self.extension.id, exc)
            return
        await self._settle(listed, leaks_only=False)

    async def sweep_leaks(self) -> list[str]:
        """One leak sweep while the worker runs (``workers/leak_sweep.py`` repeats it): of
        :meth:`reconcile`'s steps, only those that remove what no live sandbox of the log is
        (:data:`~sandboxer.domain.drift.LEAK_STEPS`): a copy of a sandbox placed elsewhere, an
        earlier attempt's copy beside a live one, a failed or destroyed sandbox's leftovers;
        and those that freeze or thaw a live one to be as paused as its log says
        (:data:`~sandboxer.domain.drift.MATCH_STEPS`).
        A sandbox a job of this worker has in hand is skipped (its job decides), and what
        the log says of each is read again right before acting on it. What was removed is
        recorded as a ``reaped`` host event, as ``reap-stale --apply`` records its own; the
        ids are returned. A listing that fails raises (the caller tries again later). The
        snapshot objects nothing holds any more are collected first (a failure there is
        logged, and the leak steps still run)."""
        await self._snapshots.collect()
        listed = await self.extension.list_sandboxes()
        removed = await self._settle(listed, leaks_only=True)
        for host, ids in _by_host(removed).items():
            await self._store.record(
                HostReaped(
                    host=event_host(host),
                    extension=self.extension.id,
                    actor=LEAK_SWEEP_ACTOR,
                    at=utc_now(),
                    removed=ids,
                )
            )
        return list(dict.fromkeys(sandbox_id for _, sandbox_id in removed))

    async def _settle(
        self, listed: Sequence[FoundSandbox], *, leaks_only: bool
    ) -> list[tuple[str | None, str]]:
        """Take each listed sandbox's step (:func:`~sandboxer.domain.drift.reconcile_step`;
        with ``leaks_only``, :func:`~sandboxer.domain.drift.sweep_step`), under the sandbox's
        lock so that no job of this worker starts on it meanwhile; the (host, id) of each
        sandbox something was removed of. The start and the sweep share it."""
        # Judged by attempt only where that attempt's alone can be removed (below).
        by_attempt = isinstance(self.extension, AttemptScoped)
        siblings = by_id(listed)  # a hosted id may list several provider sandboxes
        step_of = sweep_step if leaks_only else reconcile_step
        removed: list[tuple[str | None, str]] = []
        for found in listed:
            lock = self._lock(found.sandbox_id)
            if leaks_only and lock.locked():
                continue  # a job of this worker has it in hand: what is there is that job's
            async with lock:
                # Read for each: the steps before may have taken a while (a teardown's looks).
                state = (await self._store.load(found.sandbox_id)).state
                # ``leave`` for one not this backend's own (another declaration's, on the
                # same provider account); reap-stale judges through the same step_for.
                step = step_for(
                    found,
                    self.extension.id,
                    state,
                    siblings[found.sandbox_id],
                    by_attempt=by_attempt,
                    step_of=step_of,
                )
                if await self._take(step, found, state):
                    removed.append((found.host, found.sandbox_id))
        return removed

    async def _take(self, step: ReconcileStep, found: FoundSandbox, state: SandboxState) -> bool:
        """Take ``step`` for ``found``, whose log says ``state``; whether it removed what
        the backend held (a removing step whose teardown worked)."""
        if step == "adopt":
            log.info("adopted sandbox %s", found.sandbox_id)
        elif step == "fail":
            await self._safe_teardown(found.sandbox_id, found.host)
            await self.apply(
                found.sandbox_id,
                MarkFailed(
                    job_id="reconcile",
                    reason="the sandbox's processes died while no worker was watching; recreate it",
                    stage="job",
                ),
            )
        elif step == "finish_teardown":
            failure = await self._safe_teardown(found.sandbox_id, found.host)
            await self.apply(
                found.sandbox_id,
                FinishTeardown(job_id="reconcile")
                if failure is None
                else MarkTeardownFailed(job_id="reconcile", reason=failure),
            )
        elif step in LEAK_STEPS:
            return await self._remove_leak(step, found, state)
        elif step in {"freeze", "thaw"}:
            await self._pauses.match_log(step, state)
        elif step == "unknown":
            log.warning(
                "sandbox %s exists on this host but not in the log; "
                "'sandboxer reap-stale' removes such orphans",
                found.sandbox_id,
            )
        return False

    async def _remove_leak(
        self, step: ReconcileStep, found: FoundSandbox, state: SandboxState
    ) -> bool:
        """Remove what ``found`` is of a sandbox no live one of the log is (a step of
        :data:`~sandboxer.domain.drift.LEAK_STEPS`); whether the teardown worked."""
        backend: Extension | None = None  # a failed or destroyed one's: the log's key
        if step == "remove_copy":
            log.info(
                "sandbox %s lives on %s; removing the copy left here",
                found.sandbox_id,
                placed_elsewhere(found, self.extension.id, state),
            )
            # With the key it was listed with: the key the log recorded is the one its
            # routing to the other backend chose.
            backend = self.extension
        elif step == "remove_earlier_attempt":
            assert found.made_by is not None  # what earlier_attempt judged by
            log.info(
                "sandbox %s: removing a copy made by attempt %d.%d beside the live one "
                "(attempt %d.%d)",
                found.sandbox_id,
                *found.made_by,
                state.generation,
                state.attempt,
            )
            backend = self.extension  # listed with this key
        # On an AttemptScoped backend, never a later attempt's than the step may remove:
        # the live one beside an earlier attempt's copy, or a recreate another worker
        # started since the log was read (removal_scope).
        scope = removal_scope(step, found, state)
        made = None if scope is None else Attempt(self.extension.id, *scope)
        failure = await self._safe_teardown(found.sandbox_id, found.host, backend, made_by=made)
        return failure is None

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        lock = self._locks.get(sandbox_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[sandbox_id] = lock
        return lock

    async def handle(self, msg: Msg) -> None:
        try:
            job = msgspec.json.decode(msg.data, type=Job)
        except (msgspec.DecodeError, RecursionError) as exc:
            await self._reject_job(msg, f"the job is unreadable: {exc}")
            return
        async with self._lock(job.sandbox_id):
            # A provision carries the state it was made from (a guess its appends check).
            known = job.known_loaded() if job.action == "provision" else None
            loaded = known or await deciding.load_current(self._store, job.sandbox_id, job.version)
            host = loaded.state.host
            if job.action == "snapshot":
                redelivered = msg.metadata.num_delivered > 1
                await self._snapshots.run(job, loaded.state, redelivered=redelivered)
            elif job.action in {"pause", "resume"}:
                await self._pauses.run(job, loaded.state)
            elif job.action == "teardown":
                await self._teardown(job, host)
            elif job.action == "retime":
                await self._retime(job, loaded)
            else:
                await self._provision(job, msg, loaded)  # a recreate's clean start in _start

    async def apply(
        self,
        sandbox_id: str,
        command: DomainCommand,
        known: Loaded | None = None,
        *,
        at_least: int = 0,
        on_turn: Callable[[], object] | None = None,
    ) -> tuple[Loaded, bool]:
        """Change the sandbox through the shared load-decide-append loop (``at_least``: the
        version its job was made from, below which a read of the log is waited out;
        ``on_turn``: see :func:`~sandboxer.workers.deciding.apply`)."""
        return await deciding.apply(
            self._store, sandbox_id, command, known, at_least=at_least, on_turn=on_turn
        )

    async def _start(
        self, job: Job, msg: Msg, known: Loaded
    ) -> tuple[Loaded, asyncio.Task[str | None] | None] | None:
        """Record `provisioning` and, beside it, claim a warm pool member when the profile has
        a pool; None when the sandbox needs no provisioning (what it needs instead is done).
        A provisioning of a later generation than the first, once started, first removes the
        previous generation's sandbox (:meth:`_clean_start`), whatever job started it: a stale
        provision job (the create's, redelivered or published again) picked up while the
        sandbox is ``recreating`` starts generation 2 as the recreate's own job would. A job of
        this backend for a sandbox the log now places on another (the refuser's provision job
        after a reroute) starts nothing and is dropped: it does not provision here.

        The claim appends to another aggregate (the member's), so it goes out beside
        `provisioning` rather than after it: one round trip less on a warm create. A job seen
        before may have a claim on record already: the keeper looks for it first.
        """
        claiming: asyncio.Task[str | None] | None = None

        def claim_beside() -> None:
            # Started once the sandbox's turn is this job's, right before `provisioning` is
            # sent: the member's `claimed` goes out after it. Started earlier, it went first
            # whenever the control worker in this process still held the turn (a job sent
            # with its create's events arrives before their acks), and `provisioning`, which
            # after such a job expects `routed` as the stream's last message, was refused.
            nonlocal claiming
            claiming = self._claim_beside(
                known.state,
                job,
                retry=known.state.attempt >= 1 or msg.metadata.num_delivered > 1,
            )

        taken = False
        try:
            loaded, started = await self.apply(
                job.sandbox_id,
                StartProvisioning(job_id=job.job_id, worker=self.name, extension=self.extension.id),
                known,
                at_least=job.version,
                on_turn=claim_beside,
            )
            if started and loaded.state.generation > 1:  # not on a first create's path
                taken = not await self._clean_start(job.sandbox_id, loaded.state)
        except LogBehind as behind:
            if not await self._orphaned(job, msg, behind.state, claiming):
                raise
            return None
        except BaseException:
            if claiming is not None:  # a member claimed for this job: its redelivery's
                await asyncio.gather(claiming, return_exceptions=True)
            raise
        if started and not taken:
            return loaded, claiming
        if claiming is not None:
            # Claimed for a create that needs none: torn down now when the sandbox is past
            # provisioning (the keeper's reconcile would, later, for good measure).
            await self._release_unused(claiming)
        if taken:
            return None  # the later attempt provisions it (logged by _taken_over)
        state = loaded.state
        if state.extension != self.extension.id:
            # This backend's job (redelivered or sent again) after a reroute placed the
            # sandbox on another one: that backend's own jobs provision it and tear it down.
            # Dropped without a call here; a copy this backend may still hold is removed as a
            # sandbox placed elsewhere (the leak sweep, the next start, reap-stale).
            log.info(
                "job %s: dropped, sandbox %s is %s's now (%s)",
                job.job_id,
                job.sandbox_id,
                state.extension,
                state.status,
            )
            return None
        log.info("job %s: nothing to do, sandbox is %s", job.job_id, state.status)
        if state.status in {"destroying", "destroyed"}:
            gone = await backend_for(self._store, self.extension, state)
            await gone.teardown(job.sandbox_id, host=state.host)
        if state.status == "rerouting":  # a crash came before the reroute was sent
            await request_reroute(self._js, state)
        return None

    async def _ahead_or_start(
        self, job: Job, msg: Msg, known: Loaded
    ) -> tuple[Loaded, asyncio.Task[str | None] | None] | None:
        """:meth:`_start`, unless a warm claim with nothing to apply sends `provisioning`,
        `claimed` and `ready` in one write (workers/claim_ahead.py): None when that made the
        sandbox ready; else what landed of it, and the claim to go on with (the member
        already claimed, or a claim started now), as :meth:`_start` returns them."""
        ahead = await self._ahead(job, msg, known)
        if ahead is None:
            return await self._start(job, msg, known)
        if ahead.ready:
            return None
        if ahead.member_id is not None:
            return ahead.started, asyncio.create_task(_given(ahead.member_id))
        return ahead.started, self._claim_beside(ahead.started.state, job, retry=False)

    async def _ahead(self, job: Job, msg: Msg, known: Loaded) -> Ahead | None:
        state = known.state
        if self._pools is None or state.profile is None or not self._pools.serves(state.profile):
            return None
        try:
            profile = self._profile_of(state)
        except SandboxerError:
            return None  # the usual path says why
        return await ready_in_one_write(
            self._store, self._pools, self.extension, job, msg, known, profile, worker=self.name
        )

    async def _orphaned(
        self,
        job: Job,
        msg: Msg,
        found: SandboxState,
        claiming: asyncio.Task[str | None] | None,
    ) -> bool:
        """Whether ``job``, ahead of the log (``found``: what a read of it holds), is dropped.
        A create's job goes out with its events (docs/protocol.md#jobs), which may not be
        stored yet (waited for: False, the member claimed for it kept for its redelivery) or,
        refused, never be (:func:`~sandboxer.domain.lost_creates.job_orphaned`: True, the
        member given back)."""
        if not job_orphaned(found, utc_text(msg.metadata.timestamp), utc_now()):
            if claiming is not None:
                await asyncio.gather(claiming, return_exceptions=True)
            return False
        log.warning(
            "job %s: dropped, the events of its create never landed (sandbox %s is %s)",
            job.job_id,
            job.sandbox_id,
            found.status,
        )
        if claiming is not None:
            await self._release_unused(claiming)
        return True

    async def _clean_start(self, sandbox_id: str, state: SandboxState) -> bool:
        """Remove the previous generation's sandbox before a recreate provisions the next one
        under the same id; False when a later attempt has the sandbox already, so that nothing
        here is this job's to do.

        Called for every provisioning of generation 2 or later, whichever job started it: the
        recreate's, a retry attempt of it, a fallback's within the generation (on the next
        backend, where nothing live of the id is: at most a refused earlier attempt's late copy
        goes), or a stale provision job that found the sandbox ``recreating`` (that job, not
        the recreate's, then starts generation 2, and the recreate's own job finds nothing to
        do). Generation 1 (a warm or cold create) never comes here.

        Called only once this job's ``provisioning`` is on record: a stale recreate job (one
        redelivered after the worker appended ``ready`` but before its ack, or published again)
        starts nothing, so it removes nothing, where a teardown before that look removed the
        live sandbox and then found it "ready". On a backend that labels attempts
        (:class:`AttemptScoped`) only this attempt's and earlier ones' go (none of this
        attempt's exists yet), never what a later attempt made: this job may have been handed
        to another worker while this one was frozen. Elsewhere the teardown takes everything
        under the id, so the log is read right before it: a worker frozen past ``ack_wait``
        between its ``provisioning`` and here finds itself taken over and leaves the sandbox.
        A freeze between that read and the teardown still removes the later attempt's sandbox
        (docs/extensions.md)."""
        mine = Attempt.of(state)
        if await self._taken_over(sandbox_id, mine):
            return False
        backend = await backend_for(self._store, self.extension, state)
        await _remove(backend, sandbox_id, state.host, mine)
        return True

    async def _provision_failed(
        self,
        job: Job,
        state: SandboxState,
        profile: Profile | None,
        stage: Literal["provision", "wait_ready"],
        mine: Attempt,
        exc: Exception,
        secrets: dict[str, str],
    ) -> None:
        """Clean up what a failed provisioning made, then reroute the sandbox to another
        candidate (a provider's refusal) or fail it."""
        reason = _reason(exc, secrets)
        log.warning("sandbox %s failed at %s: %s", job.sandbox_id, stage, reason)
        if await self._taken_over(job.sandbox_id, mine):
            # What is there now is the later attempt's: not ours to tear down. A backend that
            # labels what each attempt makes can still remove this one's (a create of it
            # that landed late) without touching the later one's.
            if isinstance(self.extension, AttemptScoped):
                await self._safe_teardown(job.sandbox_id, state.host, made_by=mine)
            return
        # Only this attempt's where the backend can tell: the later attempt that would take
        # over may start between the look above and this teardown.
        cleanup = await self._safe_teardown(job.sandbox_id, state.host, made_by=mine)
        if cleanup is not None:
            # What the backend made is still there: the sandbox stays this backend's
            # (failed, so its expiry or a destroy tears it down here), never rerouted to
            # another that would leave this one's copy where no teardown looks.
            reason = f"{reason}; and its cleanup failed: {cleanup}"
        refusers = (*state.refused_by, self.extension.id)
        if (
            cleanup is None
            and isinstance(exc, ProviderError)
            and exc.retryable
            and profile is not None
            and has_fallback(profile, refusers)
        ):
            # Another candidate may take it: record the refusal, then ask for a reroute.
            loaded, refused = await self.apply(
                job.sandbox_id,
                MarkRerouting(
                    job_id=job.job_id,
                    extension=self.extension.id,
                    reason=reason,
                    code=exc.code,
                    attempt=mine,
                ),
            )
            if refused:
                await request_reroute(self._js, loaded.state)
            return
        await self.apply(
            job.sandbox_id,
            MarkFailed(
                job_id=job.job_id,
                reason=reason,
                stage=stage,
                retryable=isinstance(exc, ProviderError) and exc.retryable,
                code=exc.code if isinstance(exc, SandboxerError) else None,
                attempt=mine,
            ),
        )

    async def _provision(self, job: Job, msg: Msg, known: Loaded) -> None:
        started = await self._ahead_or_start(job, msg, known)
        if started is None:
            return
        loaded, claiming = started
        state = loaded.state
        assert state.profile is not None
        mine = Attempt.of(state)  # a later attempt (this job redelivered elsewhere) fences it
        secrets: dict[str, str] = {}
        stage: Literal["provision", "wait_ready"] = "provision"
        profile: Profile | None = None
        backend = self.extension
        try:
            backend = await backend_for(self._store, self.extension, state)  # BYOK: its key
            profile = self._profile_of(state)
            secrets = resolve_secrets(profile.setup.secret_refs)
            # Directory inputs are vetted here, before the backend sees any of them: an
            # upload is fetched and checked, a host path must lie under the input roots.
            names = directory_input_names(profile, getattr(self.extension, "directory_inputs", ()))
            async with self._directories.prepared(job.sandbox_id, state.inputs, names) as inputs:
                request = ProvisionRequest.of(
                    state,
                    profile,
                    inputs,
                    secrets=secrets,
                    staged=staged_names(state.inputs, names),
                )
                if profile.setup.record_telemetry:
                    await inspect_and_record(self._store, self.extension, state.host)
                pool_member = await claiming if claiming is not None else None
                if pool_member is None:
                    await backend.provision(request)
                    stage = "wait_ready"
                readiness, pool_member = await self._ready(backend, request, pool_member)
                # Inside the sandbox, before `ready`: a failing command fails the sandbox
                # (stage provision, code setup_failed).
                stage = "provision"
                setup = await run_setup_commands(
                    backend,
                    job.sandbox_id,
                    profile.setup.commands,
                    secrets,
                    host=state.host,
                    timeout=parse_duration(profile.setup.command_timeout),
                )
            if profile.setup.record_telemetry:  # after readiness, before `ready` is announced
                await inspect_and_record(self._store, self.extension, state.host)
        except Exception as exc:
            if is_unavailability(exc):
                raise  # the log, not the sandbox, failed: the job is retried once it is back
            await self._provision_failed(job, state, profile, stage, mine, exc, secrets)
            return
        loaded, marked = await self.apply(
            job.sandbox_id,
            MarkReady(
                job_id=job.job_id,
                reachability=readiness.descriptor,
                warnings=[*readiness.warnings, *_access_warnings(backend, profile)],
                setup=setup,
                pool_member=pool_member,
                attempt=mine,
            ),
            loaded,
        )
        if marked and loaded.state.expires_at != request.expires_at:
            # Extended while it was provisioning: the provider was given the old expiry.
            await follow_expiry(backend, loaded.state, lambda exc: _reason(exc, secrets))
        if taken_over(loaded.state, mine):
            _log_taken_over(job.sandbox_id, mine, loaded.state)
            if isinstance(backend, AttemptScoped):  # this attempt's own only (see above)
                await self._safe_teardown(job.sandbox_id, state.host, backend, made_by=mine)
        elif not marked and loaded.state.status not in {"ready", "active"}:
            # Destroyed (or recreated) while we worked: do not leave what we made behind.
            log.info(
                "sandbox %s became %s during provisioning; tearing down",
                job.sandbox_id,
                loaded.state.status,
            )
            await _remove(backend, job.sandbox_id, state.host, mine)

    async def _taken_over(self, sandbox_id: str, mine: Attempt) -> bool:
        """Whether a later attempt has the sandbox and what ``mine`` made (logged when so)."""
        current = (await self._store.load(sandbox_id)).state
        if not taken_over(current, mine):
            return False
        _log_taken_over(sandbox_id, mine, current)
        return True

    def _profile_of(self, state: SandboxState) -> Profile:
        """The sandbox's profile with the network policy in force, as `requested` recorded it."""
        assert state.profile is not None
        profile = self._catalog.profile(state.profile)
        if state.network is not None:
            profile = profile.with_network(parse_policy(msgspec.to_builtins(state.network)))
        return profile

    async def _release_unused(self, claiming: asyncio.Task[str | None]) -> None:
        """Give back the member ``claiming`` took for a job that turned out to need none."""
        await asyncio.gather(claiming, return_exceptions=True)
        if claiming.cancelled() or claiming.exception() is not None or self._pools is None:
            return
        member_id = claiming.result()
        if member_id is None:
            return
        try:
            await self._pools.release(member_id)
        except Exception as exc:  # the reconcile is the backstop
            log.warning("pool member %s claimed for nothing, not torn down yet: %s", member_id, exc)

    def _claim_beside(
        self, state: SandboxState, job: Job, *, retry: bool
    ) -> asyncio.Task[str | None] | None:
        """The claim of a warm pool member for this create, started now, or None when the
        sandbox's profile has no pool here (or cannot be read: the create then says why)."""
        if self._pools is None or state.profile is None or not self._pools.serves(state.profile):
            return None
        try:
            profile = self._profile_of(state)
        except SandboxerError:
            return None
        claim = self._pools.claim(profile, job.sandbox_id, job.job_id, retry=retry)
        return asyncio.create_task(claim)

    async def _ready(
        self, backend: Extension, request: ProvisionRequest, member_id: str | None
    ) -> tuple[Readiness, str | None]:
        """Wait for a provisioned sandbox, or make the claimed pool member the create's
        sandbox; a member found dead is replaced by a cold provision (the keeper tears
        down what is left of it). Also says which member the sandbox is, if one."""
        if member_id is None or not isinstance(backend, Pooling):
            return await backend.wait_ready(request), None
        try:
            readiness: Readiness = await backend.claim(member_id, request)
        except SandboxNotFound as exc:  # only a dead member: a failing setup fails the create
            log.warning(
                "sandbox %s: pool member %s unusable (%s); made cold",
                request.sandbox_id,
                member_id,
                exc,
            )
            await backend.provision(request)
            return await backend.wait_ready(request), None
        return readiness, member_id

    async def _retime(self, job: Job, loaded: Loaded) -> None:
        """Move the provider's own timeout to the sandbox's new expiry (a no-op elsewhere)."""
        state = loaded.state
        if not isinstance(self.extension, TimeoutKeeper) or state.expires_at is None:
            return
        if state.status not in {"ready", "active"}:
            log.info("job %s: nothing to do, sandbox is %s", job.job_id, state.status)
            return
        backend = await backend_for(self._store, self.extension, state)
        assert isinstance(backend, TimeoutKeeper)  # a copy of the same class
        await backend.set_timeout(job.sandbox_id, state.expires_at, host=state.host)

    async def _teardown(self, job: Job, host: str | None) -> None:
        backend = await backend_for_id(self._store, self.extension, job.sandbox_id)
        await backend.teardown(job.sandbox_id, host=host)
        await self.apply(job.sandbox_id, FinishTeardown(job_id=job.job_id))

    async def _safe_teardown(
        self,
        sandbox_id: str,
        host: str | None,
        backend: Extension | None = None,
        *,
        made_by: Attempt | None = None,
    ) -> str | None:
        """Tear down without raising: None when it worked, else why it did not. ``backend``:
        the one to use, else the one speaking with the key the sandbox's log chose.
        ``made_by``: only what that provisioning and earlier ones made (:func:`_remove`)."""
        try:
            if backend is None:
                backend = await backend_for_id(self._store, self.extension, sandbox_id)
            await _remove(backend, sandbox_id, host, made_by)
        except Exception as exc:
            log.exception("teardown of %s failed", sandbox_id)
            return _reason(exc, {})
        return None

    async def _on_poison(self, msg: Msg, exc: BaseException) -> None:
        """The job kept failing: record why on the sandbox (``handle`` rejected unreadable ones)."""
        job = msgspec.json.decode(msg.data, type=Job)
        reason = _reason(exc, {})
        if job.action == "snapshot":
            await self._snapshots.give_up(job, exc)  # the sandbox itself is untouched
            return
        if job.action in {"pause", "resume"}:
            await self._pauses.give_up(job, f"worker error: {reason}", outcome_unknown=True)
            return
        if job.action == "retime":
            # The sandbox is fine; its provider may end it at the old time, which the
            # inventory then records as a failure. Nothing here can do better.
            log.warning(
                "sandbox %s: moving the provider's timeout failed: %s", job.sandbox_id, reason
            )
            return
        if job.action == "teardown":
            # Stays 'destroying', marked stuck; destroy again or reap-stale retries it.
            await self.apply(job.sandbox_id, MarkTeardownFailed(job_id=job.job_id, reason=reason))
            return
        await self._give_up_provision(job, reason)

    async def _give_up_provision(self, job: Job, reason: str) -> None:
        """A provision or recreate job ran out of deliveries: tear down what it made and fail
        the sandbox, while the job is still the sandbox's work (:func:`job_current`). A stale
        one (this backend's job after a reroute moved the sandbox, or one the sandbox is past)
        touches nothing: a teardown here took a ready sandbox down, and ``failed`` ended
        another backend's."""
        async with self._lock(job.sandbox_id):
            state = (await self._store.load(job.sandbox_id)).state
            if not job_current(state, self.extension.id):
                log.warning(
                    "job %s gave up (%s); sandbox %s is %s on %s, not this job's: left alone",
                    job.job_id,
                    reason,
                    job.sandbox_id,
                    state.status,
                    state.extension,
                )
                return
            # Only this provisioning's and earlier ones' (a later one's fences this outcome).
            mine = Attempt.of(state) if state.status == "provisioning" else None
            await self._safe_teardown(job.sandbox_id, state.host, made_by=mine)
            await self.apply(
                job.sandbox_id,
                MarkFailed(
                    job_id=job.job_id,
                    reason=f"worker error: {reason}",
                    stage="job",
                    attempt=mine,
                    job_of=self.extension.id,
                ),
            )

    async def _reject_job(self, msg: Msg, reason: str) -> None:
        """Record a job nobody can run (only the control worker publishes jobs: this is junk)."""
        log.warning("rejecting an unreadable job on %s: %s", msg.subject, reason)
        await self._store.record(
            CommandRejected(
                command_id=None,
                command="job",
                code="unreadable_job",
                reason=reason[:MAX_REASON_CHARS],
                stream_seq=msg.metadata.sequence.stream,
                stream=subjects.JOBS_STREAM,
                actor=SYSTEM_ACTOR,
                at=utc_now(),
            )
        )


async def _remove(
    backend: Extension, sandbox_id: str, host: str | None, made_by: Attempt | None
) -> None:
    """Tear the sandbox down; with ``made_by``, only what that provisioning and earlier ones
    made where the backend can tell (:class:`AttemptScoped`): the job may have gone to another
    worker while this one was frozen or cut off, and the log's ``ready`` may name what that
    later attempt made. Other backends remove everything under the id, as before."""
    scope = None if made_by is None else (made_by.generation, made_by.attempt)
    await remove_scoped(backend, sandbox_id, host, scope)


def _by_host(removed: list[tuple[str | None, str]]) -> dict[str | None, list[str]]:
    """The sandbox ids removed on each host, each once, in the order removed."""
    hosts: dict[str | None, list[str]] = {}
    for host, sandbox_id in removed:
        ids = hosts.setdefault(host, [])
        if sandbox_id not in ids:
            ids.append(sandbox_id)
    return hosts


async def _given(member_id: str) -> str | None:
    return member_id


def _access_warnings(backend: Extension, profile: Profile | None) -> list[str]:
    warning = (
        None if profile is None else workspace_access_warning(backend, profile.workspace.access)
    )
    return [] if warning is None else [warning]


def _log_taken_over(sandbox_id: str, mine: Attempt, now: SandboxState) -> None:
    log.info(
        "sandbox %s: generation %d attempt %d was taken over by generation %d attempt %d; "
        "leaving the sandbox to it",
        sandbox_id,
        mine.generation,
        mine.attempt,
        now.generation,
        now.attempt,
    )


def _reason(exc: BaseException, secrets: dict[str, str]) -> str:
    text = exc.message if isinstance(exc, SandboxerError) else f"{type(exc).__name__}: {exc}"
    return redact(text, secrets.values())[:MAX_REASON_CHARS]
