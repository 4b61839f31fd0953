"""The meter: when a sandbox is ``destroyed``, debit its project for the time it was usable.

A durable pull consumer (``meter``) on ``sandboxer.evt.sandbox.*.destroyed``.
For each one it loads the sandbox, takes its billable seconds from the folded
state (:mod:`sandboxer.domain.usage`: each ``ready`` or ``resumed`` to the next
pause, recreate, reroute, failure, expiry or destroy), and appends
``usage_metered`` on the project's account under the command id
``meter-<sandbox_id>``: the debit at the prices reserved for the sandbox
(or its backend's declared ones when nothing was reserved for it: free
backends, BYOK, a hold made for another create of its id or another
backend), with its whole reservation released.

``destroyed`` is the one terminal event: a ``failed`` sandbox may still be
recreated, and one left failed expires and is destroyed like any other, so
metering at ``destroyed`` meters every sandbox exactly once and its whole life.

Exactly once: a crash after the append and before the ack redelivers the
message, and the account has already handled ``meter-<sandbox_id>``, so the
redelivery decides nothing; JetStream also drops the retried append itself
(its event id is deterministic). The same makes it safe to read ``destroyed``
events again when a bus client has redefined the durable and the pull loop makes
it again from the last one known handled (:mod:`sandboxer.bus.guarded_durable`).
"""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from sandboxer import subjects
from sandboxer.bus.event_store import EventStore
from sandboxer.clock import utc_now
from sandboxer.config.catalog import Catalog
from sandboxer.config.settings import Settings
from sandboxer.domain.account_decide import MeterUsage, meter_command_id
from sandboxer.domain.account_state import project_of
from sandboxer.domain.pricing import per_create_microusd, per_second_microusd
from sandboxer.domain.usage import billable_seconds, billed_seconds
from sandboxer.errors import StreamUnavailable, UnknownEventType
from sandboxer.events.codec import decode_event
from sandboxer.events.types import Actor, CommandRejected, SandboxDestroyed
from sandboxer.workers.credit_reservation import decimal_text, wants_gpu
from sandboxer.workers.deciding import apply_account
from sandboxer.workers.pull_loop import ConsumerSpec, run_pull_consumer

__all__ = ["METER_ACTOR", "MeterWorker"]

log = logging.getLogger(__name__)

METER_ACTOR = Actor(type="atm", id="sandboxer-meter")
DESTROYED = subjects.sandbox_event_subject("*", "destroyed")


class MeterWorker:
    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        store: EventStore,
        catalog: Catalog,
        settings: Settings,
    ) -> None:
        self._nc = nc  # its durable's guard sends requests of its own (bus/guarded_durable.py)
        self._home = settings.home  # where the guard keeps a remake's floor
        self._js = js
        self._store = store
        self._catalog = catalog
        self.spec = ConsumerSpec(
            stream=subjects.EVENTS_STREAM,
            durable="meter",
            filter_subject=DESTROYED,
            ack_wait=settings.ack_wait,
        )

    async def run(self, stop: asyncio.Event) -> None:
        await run_pull_consumer(
            self._js, self.spec, self.handle, self._on_poison, stop, nc=self._nc, home=self._home
        )

    async def handle(self, msg: Msg) -> None:
        try:
            event = decode_event(msg.data)
        except UnknownEventType as unknown:  # a newer writer's: nothing this meter can read
            log.warning("event %d skipped: %s", msg.metadata.sequence.stream, unknown)
            return
        if isinstance(event, SandboxDestroyed):
            await self.meter(
                event.sandbox_id,
                causation_id=event.event_id or None,
                seen_at=msg.metadata.sequence.stream,
            )

    async def meter(
        self, sandbox_id: str, *, causation_id: str | None = None, seen_at: int = 0
    ) -> None:
        """Append ``usage_metered`` for a destroyed sandbox (nothing when already metered).
        ``seen_at``: where its ``destroyed`` is in the log, which the read must reach."""
        read = await self._store.load(sandbox_id)
        if read.last_seq < seen_at:
            # A replica still catching up answered (on a cluster any replica answers a direct
            # get). Acked now, the sandbox would never be metered: wait for a current read.
            raise StreamUnavailable(
                f"sandbox {sandbox_id}: the log read ends at {read.last_seq}, before its "
                f"destroyed event at {seen_at}; metering it once the replicas catch up"
            )
        state = read.state
        if state.status != "destroyed":
            return  # (a destroyed event always folds to destroyed; nothing else is metered)
        decl = self._catalog.extensions_enabled().get(state.extension or "")
        gpu = wants_gpu(self._catalog, state.profile)
        per_second = per_second_microusd(decl.pricing, gpu) if decl else None
        per_create = per_create_microusd(decl.pricing) if decl else None
        project = project_of(state.actor)
        seconds = billed_seconds(billable_seconds(state, now=state.updated_at or utc_now()))
        usage = MeterUsage(
            command_id=meter_command_id(sandbox_id),
            causation_id=causation_id,
            actor=METER_ACTOR,
            sandbox_id=sandbox_id,
            extension=state.extension,
            profile=state.profile,
            seconds=seconds,
            price="0" if per_second is None else decimal_text(per_second),
            create_price="0" if per_create is None else decimal_text(per_create),
            provider_key=state.provider_key,
            created_by=state.created_by,
        )
        loaded, changed = await apply_account(self._store, project, usage)
        if changed:
            log.info(
                "metered %s: %d s on %s; %s's balance is now %d",
                sandbox_id,
                seconds,
                state.extension,
                project,
                loaded.state.balance,
            )

    async def _on_poison(self, msg: Msg, exc: BaseException) -> None:
        """Metering kept failing: record why (the sandbox stays unmetered until a rerun)."""
        sandbox_id = msg.subject.split(".")[3] if msg.subject.count(".") >= 4 else None
        await self._store.record(
            CommandRejected(
                command_id=meter_command_id(sandbox_id) if sandbox_id else None,
                command="meter",
                code="internal_error",
                reason=f"metering failed {self.spec.max_failures} times ({exc}); see the log",
                sandbox_id=sandbox_id,
                stream_seq=msg.metadata.sequence.stream,
                stream=subjects.EVENTS_STREAM,
                actor=METER_ACTOR,
                at=utc_now(),
            )
        )
