"""The loop every worker runs: a durable pull consumer with bounded concurrency.

Explicit ack; ``ack_wait`` longer than the work (handlers call
``in_progress()`` during long steps); a bounded ``max_deliver``. A handler that
raises is retried by redelivery; on the last delivery its ``on_poison`` hook
records the failure as an event and the message is terminated, so a poison
message never becomes a crash loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import ServiceUnavailableError

__all__ = ["ConsumerSpec", "run_pull_consumer"]

log = logging.getLogger(__name__)

IDLE_POLL = 0.5
"""Seconds a fetch waits for work; also how long a stop takes to be noticed."""

Handler = Callable[[Msg], Awaitable[None]]
PoisonHook = Callable[[Msg, BaseException], Awaitable[None]]


@dataclass(frozen=True, kw_only=True)
class ConsumerSpec:
    stream: str
    durable: str
    filter_subject: str
    ack_wait: float = 30.0
    max_deliver: int = 5
    concurrency: int = 64


async def _ensure_consumer(js: JetStreamContext, spec: ConsumerSpec) -> None:
    # Create-or-update: a restarted worker with new settings updates its durable.
    await js.add_consumer(
        spec.stream,
        ConsumerConfig(
            durable_name=spec.durable,
            name=spec.durable,
            filter_subject=spec.filter_subject,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=spec.ack_wait,
            max_deliver=spec.max_deliver,
            max_ack_pending=max(spec.concurrency * 4, 256),
        ),
    )


def is_last_delivery(msg: Msg, spec: ConsumerSpec) -> bool:
    return msg.metadata.num_delivered >= spec.max_deliver


async def _fetch_one(psub: JetStreamContext.PullSubscription) -> Msg | None:
    """The next message, as soon as there is one (or None after ``IDLE_POLL``).

    One at a time on purpose: nats-py's ``fetch(batch=n)`` waits out its whole
    timeout for the n-th message once the first has arrived, which would add
    that timeout to every create on an idle service. Throughput comes from
    handling each message in its own task, not from batching the fetch.
    """
    try:
        msgs = await psub.fetch(batch=1, timeout=IDLE_POLL)
    except (TimeoutError, NatsTimeout):
        return None
    except ServiceUnavailableError:
        # A replicated consumer just created may have no leader yet: wait, as if idle.
        await asyncio.sleep(IDLE_POLL)
        return None
    return msgs[0] if msgs else None


async def run_pull_consumer(
    js: JetStreamContext,
    spec: ConsumerSpec,
    handler: Handler,
    on_poison: PoisonHook,
    stop: asyncio.Event,
) -> None:
    """Fetch and handle messages until ``stop`` is set, then finish the ones in flight."""
    await _ensure_consumer(js, spec)
    psub = await js.pull_subscribe_bind(durable=spec.durable, stream=spec.stream)
    slots = asyncio.Semaphore(spec.concurrency)
    in_flight: set[asyncio.Task[None]] = set()

    async def handle(msg: Msg) -> None:
        try:
            await handler(msg)
        except Exception as exc:
            if is_last_delivery(msg, spec):
                log.exception("%s: giving up on %s after %d deliveries", spec.durable,
                              msg.subject, msg.metadata.num_delivered)
                try:
                    await on_poison(msg, exc)
                finally:
                    await msg.term()
            else:
                log.warning("%s: %s failed (%s); it will be redelivered", spec.durable,
                            msg.subject, exc)
                await msg.nak(delay=min(0.2 * msg.metadata.num_delivered, 2.0))
        finally:
            slots.release()

    try:
        while not stop.is_set():
            await slots.acquire()
            msg = await _fetch_one(psub)
            if msg is None:
                slots.release()
                continue
            task = asyncio.create_task(handle(msg))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
    finally:
        if in_flight:
            await asyncio.gather(*in_flight, return_exceptions=True)
        await psub.unsubscribe()
