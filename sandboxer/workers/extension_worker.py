"""The extension worker: runs one backend's jobs (provision, recreate, teardown).

It appends ``provisioning`` before doing any I/O, heartbeats the job while the
backend works, and appends ``ready`` or ``failed`` after. Whatever happens, no
half-made sandbox is left: a failure tears down what was made, and a sandbox
destroyed while it was being provisioned is torn down as soon as that is seen.
Jobs of one sandbox are serialised within a process; across processes the
event log's optimistic concurrency keeps them consistent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from typing import Literal
from weakref import WeakValueDictionary

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from sandboxer import subjects
from sandboxer.bus.event_store import EventStore, Loaded
from sandboxer.clock import utc_now
from sandboxer.config.catalog import Catalog
from sandboxer.domain.sandbox import (
    DomainCommand,
    FinishTeardown,
    MarkFailed,
    MarkReady,
    StartProvisioning,
    decide,
)
from sandboxer.errors import ConcurrencyConflict, SandboxerError
from sandboxer.extensions.base import Extension, ProvisionRequest
from sandboxer.secrets import redact, resolve_secrets
from sandboxer.workers.host_events import inspect_and_record
from sandboxer.workers.jobs import Job
from sandboxer.workers.pull_loop import ConsumerSpec, run_pull_consumer

__all__ = ["ExtensionWorker"]

log = logging.getLogger(__name__)

DECIDE_ATTEMPTS = 8
HEARTBEAT_SECONDS = 2.0
MAX_REASON_CHARS = 4000


class ExtensionWorker:
    def __init__(
        self,
        js: JetStreamContext,
        store: EventStore,
        catalog: Catalog,
        extension: Extension,
        *,
        ack_wait: float = 30.0,
    ) -> None:
        self._js = js
        self._store = store
        self._catalog = catalog
        self.extension = extension
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        # Well inside ack_wait, so a live worker's job is never redelivered to another.
        self._heartbeat_every = max(0.2, min(HEARTBEAT_SECONDS, ack_wait / 3))
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

        A live sandbox the log calls ready is adopted as it is (not duplicated);
        one whose teardown or failure cleanup was interrupted is torn down now;
        a ready one whose processes died is marked failed. Sandboxes still
        provisioning are left to their redelivered job.
        """
        for found in await self.extension.list_sandboxes():
            state = (await self._store.load(found.sandbox_id)).state
            if state.status == "ready" and found.alive:
                log.info("adopted sandbox %s", found.sandbox_id)
            elif state.status == "ready":
                await self._safe_teardown(found.sandbox_id, found.host)
                await self.apply(found.sandbox_id, MarkFailed(
                    job_id="reconcile", reason="the sandbox's processes died while no worker "
                    "was watching; recreate it", stage="job"))
            elif state.status == "destroying":
                await self._safe_teardown(found.sandbox_id, found.host)
                await self.apply(found.sandbox_id, FinishTeardown(job_id="reconcile"))
            elif state.status in {"failed", "destroyed"}:
                await self._safe_teardown(found.sandbox_id, found.host)
            elif state.status == "new":
                log.warning("sandbox %s exists on this host but not in the log; "
                            "'sandboxer reap-stale' removes such orphans", found.sandbox_id)

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        lock = self._locks.get(sandbox_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[sandbox_id] = lock
        return lock

    async def handle(self, msg: Msg) -> None:
        job = msgspec.json.decode(msg.data, type=Job)
        async with self._lock(job.sandbox_id), self._heartbeat(msg):
            loaded = await self._store.load(job.sandbox_id)
            host = loaded.state.host
            if job.action == "teardown":
                await self._teardown(job, host)
            else:
                if job.action == "recreate":
                    await self.extension.teardown(job.sandbox_id, host=host)
                await self._provision(job, msg, loaded)
        await msg.ack()

    @contextlib.asynccontextmanager
    async def _heartbeat(self, msg: Msg) -> AsyncIterator[None]:
        """Tell JetStream the job is still being worked on, so it is not redelivered meanwhile."""

        async def beat() -> None:
            while True:
                await asyncio.sleep(self._heartbeat_every)
                with contextlib.suppress(Exception):
                    await msg.in_progress()

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()

    async def apply(
        self, sandbox_id: str, command: DomainCommand, known: Loaded | None = None
    ) -> tuple[Loaded, bool]:
        """Load, decide, append (reloading on conflicts). Returns the state and whether it changed.

        ``known`` is a state this worker just loaded or appended: it is tried first,
        which saves a round trip; a conflict means it was stale, and the loop reloads.
        """
        for _ in range(DECIDE_ATTEMPTS):
            loaded = known or await self._store.load(sandbox_id)
            known = None
            events = decide(loaded.state, command, utc_now())
            if not events:
                return loaded, False
            try:
                return await self._store.append(loaded, events), True
            except ConcurrencyConflict:
                continue
        raise ConcurrencyConflict(f"sandbox {sandbox_id} kept changing", sandbox_id=sandbox_id)

    async def _provision(self, job: Job, msg: Msg, known: Loaded) -> None:
        loaded, started = await self.apply(
            job.sandbox_id, StartProvisioning(job_id=job.job_id, worker=self.name), known
        )
        state = loaded.state
        if not started:
            log.info("job %s: nothing to do, sandbox is %s", job.job_id, state.status)
            if state.status in {"destroying", "destroyed"}:
                await self.extension.teardown(job.sandbox_id, host=state.host)
            return
        assert state.profile is not None
        secrets: dict[str, str] = {}
        stage: Literal["provision", "wait_ready"] = "provision"
        try:
            profile = self._catalog.profile(state.profile)
            secrets = resolve_secrets(profile.setup.secret_refs)
            request = ProvisionRequest(
                sandbox_id=job.sandbox_id,
                profile=profile,
                inputs=state.inputs,
                secrets=secrets,
                host=state.host,
            )
            if profile.setup.record_telemetry:
                await inspect_and_record(self._js, self.extension, state.host)
            await self.extension.provision(request)
            stage = "wait_ready"
            readiness = await self.extension.wait_ready(request)
            if profile.setup.record_telemetry:  # after readiness, before `ready` is announced
                await inspect_and_record(self._js, self.extension, state.host)
        except Exception as exc:
            reason = _reason(exc, secrets)
            log.warning("sandbox %s failed at %s: %s", job.sandbox_id, stage, reason)
            await self._safe_teardown(job.sandbox_id, state.host)
            await self.apply(
                job.sandbox_id,
                MarkFailed(job_id=job.job_id, reason=reason, stage=stage),
            )
            return
        loaded, marked = await self.apply(
            job.sandbox_id,
            MarkReady(
                job_id=job.job_id,
                reachability=readiness.descriptor,
                warnings=readiness.warnings,
            ),
            loaded,
        )
        if not marked and loaded.state.status != "ready":
            # Destroyed (or recreated) while we worked: do not leave what we made behind.
            log.info("sandbox %s became %s during provisioning; tearing down",
                     job.sandbox_id, loaded.state.status)
            await self.extension.teardown(job.sandbox_id, host=state.host)

    async def _teardown(self, job: Job, host: str | None) -> None:
        await self.extension.teardown(job.sandbox_id, host=host)
        await self.apply(job.sandbox_id, FinishTeardown(job_id=job.job_id))

    async def _safe_teardown(self, sandbox_id: str, host: str | None) -> None:
        try:
            await self.extension.teardown(sandbox_id, host=host)
        except Exception:
            log.exception("teardown of %s after a failure also failed", sandbox_id)

    async def _on_poison(self, msg: Msg, exc: BaseException) -> None:
        try:
            job = msgspec.json.decode(msg.data, type=Job)
        except msgspec.DecodeError:
            log.error("dropping an unreadable job on %s: %r", msg.subject, msg.data[:200])
            return
        host = (await self._store.load(job.sandbox_id)).state.host
        await self._safe_teardown(job.sandbox_id, host)
        if job.action == "teardown":
            return  # stays 'destroying'; a new destroy command publishes the teardown again
        await self.apply(
            job.sandbox_id,
            MarkFailed(job_id=job.job_id, reason=f"worker error: {exc}", stage="job"),
        )


def _reason(exc: BaseException, secrets: dict[str, str]) -> str:
    text = exc.message if isinstance(exc, SandboxerError) else f"{type(exc).__name__}: {exc}"
    return redact(text, secrets.values())[:MAX_REASON_CHARS]
