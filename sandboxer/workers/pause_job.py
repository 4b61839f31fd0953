"""The extension worker's pause and resume jobs: freeze or thaw, then record the outcome.

The control worker decided ``pausing`` (or ``resuming``) and sent the job; this
asks the backend (:class:`~sandboxer.extensions.capabilities.Pausable`) and
records ``paused``/``resumed``, or ``pause_failed`` with the backend's reason.
A job that finds the sandbox no longer pausing or resuming (a destroy or an
expiry overtook it, or the job was redelivered after its outcome was
recorded) does nothing: a teardown thaws whatever is frozen. A job whose
freeze or thaw lands after the log moved on (it was held up past the ack wait
while another worker did its work, and the next pause or resume came) undoes
it, so the sandbox stays as its log says. So does one that fails after the log
moved on: a failed job leaves the sandbox as before it, which may be the
opposite of what another attempt at the same job recorded meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal

import stamina

from sandboxer.bus.event_store import EventStore
from sandboxer.bus.publish import is_unavailability
from sandboxer.clock import utc_now
from sandboxer.domain.deadlines import due
from sandboxer.domain.sandbox_pause import MarkPaused, MarkPauseFailed, MarkResumed
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.extensions.base import Extension
from sandboxer.extensions.capabilities import Pausable, TimeoutKeeper
from sandboxer.workers.backend_for import backend_for
from sandboxer.workers.deciding import apply
from sandboxer.workers.jobs import Job
from sandboxer.workers.provider_expiry import follow_expiry

__all__ = ["PauseJob"]

log = logging.getLogger(__name__)

_EXPECTED = {"pause": "pausing", "resume": "resuming"}
UNDO_ATTEMPTS = 3
"""Attempts at an undo (:meth:`PauseJob._undo_if_overtaken`) before it is logged and left."""
UNDO_WAIT = 1.0
"""Seconds before an undo's second attempt (doubling, jittered)."""
ENDED_OR_ENDING = {"destroying", "destroyed", "expired", "failed"}


class PauseJob:
    def __init__(
        self, store: EventStore, extension: Extension, explain: Callable[[BaseException], str]
    ) -> None:
        self._store = store
        self._extension = extension
        self._explain = explain

    async def run(self, job: Job, state: SandboxState) -> None:
        operation: Literal["pause", "resume"] = "pause" if job.action == "pause" else "resume"
        if state.status != _EXPECTED[operation] or job.for_command not in {None, state.correlation}:
            log.info("job %s: nothing to do, sandbox is %s", job.job_id, state.status)
            if operation == "resume" and isinstance(self._extension, TimeoutKeeper):
                # Delivered again after its `resumed` (a crash before its ack): the provider's
                # timeout may not have followed yet. Setting it again changes nothing else.
                again = await backend_for(self._store, self._extension, state)
                await follow_expiry(again, state, self._explain)
            return
        backend = self._extension
        if not isinstance(backend, Pausable):  # its declaration was checked at load; belt
            await self.give_up(job, f"{backend.id} does not implement pause and resume")
            return
        started = time.monotonic()
        try:
            keyed = await backend_for(self._store, backend, state)  # BYOK: the project's key
            await _carry_out(keyed, operation, job.sandbox_id, state.host)
        except Exception as exc:
            if is_unavailability(exc):
                raise  # the log, not the sandbox, failed: the job is retried
            log.warning("%s of %s failed: %s", operation, job.sandbox_id, self._explain(exc))
            await self.give_up(job, self._explain(exc))
            return
        log.info(
            "sandbox %s: %s took %.0f ms",
            job.sandbox_id,
            operation,
            (time.monotonic() - started) * 1000,
        )
        done = (
            MarkPaused(job_id=job.job_id, for_command=job.for_command)
            if operation == "pause"
            else MarkResumed(job_id=job.job_id, for_command=job.for_command)
        )
        loaded, marked = await apply(self._store, job.sandbox_id, done)
        if not marked:
            await self._undo_if_overtaken(keyed, operation, job, loaded.state)
            return
        if operation == "resume":  # ``resumed`` moved the expiry by the pause's length
            await follow_expiry(keyed, loaded.state, self._explain)

    async def _undo_if_overtaken(
        self, backend: Extension, left: Literal["pause", "resume"], job: Job, now: SandboxState
    ) -> None:
        """This job left the sandbox frozen (``left``: "pause") or running after the log moved
        on: the job was held up past the ack wait (a frozen worker) while another worker did
        it, and the next pause or resume came since; or it failed (leaving the sandbox as
        before it) after another attempt at it succeeded. Left alone, the sandbox would stay
        frozen while the log says it runs, or run while the log says it is paused: undo it
        unless the log wants it so now."""
        if not _to_undo(left, now):
            return  # as the log wants it, or a teardown (which thaws first) has it
        log.warning(
            "job %s (%s): it left the sandbox %s, but the log has it %s now; undoing that",
            job.job_id,
            job.action,
            "frozen" if left == "pause" else "running",
            now.status,
        )
        undo: Literal["pause", "resume"] = "resume" if left == "pause" else "pause"
        try:
            # Tried again a few times: a freeze that did not settle (a task held in
            # uninterruptible sleep) usually does a moment later, and until then the sandbox
            # runs while its log says paused. The log is read again before each further
            # attempt: a pause or resume recorded meanwhile decides instead.
            async for attempt in stamina.retry_context(
                on=_another_undo_may_do,
                attempts=UNDO_ATTEMPTS,
                wait_initial=UNDO_WAIT,
                wait_max=UNDO_WAIT * 4,
                wait_jitter=UNDO_WAIT / 2,
            ):
                with attempt:
                    if attempt.num > 1:
                        now = (await self._store.load(job.sandbox_id)).state
                        if not _to_undo(left, now):
                            return
                        log.info("job %s: the %s, attempt %d", job.job_id, undo, attempt.num)
                    await _carry_out(backend, undo, job.sandbox_id, now.host)
        except Exception as exc:
            if is_unavailability(exc):
                raise
            log.warning(
                "job %s: the %s that undoes it failed %d times; the sandbox stays as it is "
                "until its next pause or resume, or the worker's next leak sweep: %s",
                job.job_id,
                undo,
                UNDO_ATTEMPTS,
                exc,
            )
            return
        if undo == "resume":
            # A provider's resume sets a timeout of its own (E2B: resume_timeout, an hour):
            # left there, it ends the sandbox then, before the expiry the log gives it.
            await follow_expiry(backend, now, self._explain)

    async def give_up(self, job: Job, reason: str, *, outcome_unknown: bool = False) -> None:
        """Record that the pause or resume failed (the sandbox stays as it was). Not recorded
        when the log moved on (another attempt at this job, held up beside it, succeeded):
        "as it was" is then the opposite of what the log says, and is undone like a late
        success (ext.daytona's failed resume stops the sandbox again; ext.local's freeze that
        does not settle thaws it).

        ``outcome_unknown``: the job was given up as poison (the worker kept failing, maybe
        after the backend had done it: its ``paused`` never appended). The freeze or thaw is
        then taken for done and undone wherever the log says otherwise; undoing one that was
        not done repeats what the sandbox already is (a thaw of a running one)."""
        operation: Literal["pause", "resume"] = "pause" if job.action == "pause" else "resume"
        loaded, marked = await apply(
            self._store,
            job.sandbox_id,
            MarkPauseFailed(
                job_id=job.job_id,
                operation=operation,
                reason=reason,
                for_command=job.for_command,
            ),
        )
        if (outcome_unknown or not marked) and isinstance(self._extension, Pausable):
            pausable = await backend_for(self._store, self._extension, loaded.state)
            left: Literal["pause", "resume"] = "resume" if operation == "pause" else "pause"
            await self._undo_if_overtaken(
                pausable, operation if outcome_unknown else left, job, loaded.state
            )
        if isinstance(self._extension, TimeoutKeeper):  # an extension while it was pausing
            keyed = await backend_for(self._store, self._extension, loaded.state)
            await follow_expiry(keyed, loaded.state, self._explain)

    async def match_log(self, step: Literal["freeze", "thaw"], state: SandboxState) -> bool:
        """Freeze or thaw a live sandbox found not as paused as its log (``state``, read
        right before) says: what an undo that kept failing left, or a freezer set behind
        the service's back (:data:`~sandboxer.domain.drift.MATCH_STEPS`; a worker's start,
        its leak sweep, ``reap-stale``). Nothing is recorded: the log already says how it
        should be. Whether it was done; a failure is logged, and the next sweep tries
        again."""
        operation: Literal["pause", "resume"] = "pause" if step == "freeze" else "resume"
        deadline = due(state)
        if step == "thaw" and deadline is not None and deadline.at <= utc_now():
            # Its expiry is on its way (a provider stops one past our TTL too): thawed, a
            # hosted one would run, billed, for nothing until then.
            log.info("sandbox %s is frozen, but overdue: left to its expiry", state.sandbox_id)
            return False
        log.warning(
            "sandbox %s is not as paused as its log says (%s); %s it",
            state.sandbox_id,
            state.status,
            "freezing" if step == "freeze" else "thawing",
        )
        try:
            backend = await backend_for(self._store, self._extension, state)
            await _carry_out(backend, operation, state.sandbox_id, state.host)
        except Exception as exc:
            if is_unavailability(exc):
                raise
            log.warning(
                "sandbox %s: the %s that matches its log failed; the next sweep tries again: %s",
                state.sandbox_id,
                operation,
                self._explain(exc),
            )
            return False
        if operation == "resume":  # as after any resume (a provider's own timeout)
            await follow_expiry(backend, state, self._explain)
        return True


def _to_undo(left: Literal["pause", "resume"], now: SandboxState) -> bool:
    """Whether a sandbox a job ``left`` frozen ("pause") or running is not as the log now
    wants it (and is not being torn down, which thaws first)."""
    wanted_frozen = now.status in {"pausing", "paused"}
    return (left == "pause") != wanted_frozen and now.status not in ENDED_OR_ENDING


def _another_undo_may_do(exc: BaseException) -> bool:
    """A refusal may pass; the bus away is the job's to retry (raised at once)."""
    return not is_unavailability(exc)


async def _carry_out(
    backend: Extension | Pausable,
    operation: Literal["pause", "resume"],
    sandbox_id: str,
    host: str | None,
) -> None:
    assert isinstance(backend, Pausable)  # checked by the job before any work
    if operation == "pause":
        await backend.pause(sandbox_id, host=host)
    else:
        await backend.resume(sandbox_id, host=host)
