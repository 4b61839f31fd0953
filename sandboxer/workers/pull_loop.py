"""The loop every worker runs: a durable pull consumer with bounded concurrency.

Three rules keep every message's outcome on record, exactly once:

- **A held message is heartbeaten.** While its handler runs, the loop sends
  ``in_progress()`` every third of ``ack_wait``, so ``ack_wait`` can be short
  (5 s by default): a live worker never loses its message, and the work of a
  crashed one goes to another worker about ``ack_wait`` after the crash.
- **An unavailable bus is waited out.** A handler that fails because a stream
  had no leader, timed out or the connection was reconnecting (see
  :func:`~sandboxer.bus.publish.is_unavailability`) gets its message back
  after a growing delay, for as long as it takes: the consumer's
  ``max_deliver`` is unlimited, and such failures never count against it.
  Nor does losing the optimistic-concurrency race on a busy aggregate
  (:class:`~sandboxer.errors.ConcurrencyConflict`): the others' writes are no
  fault of the message, which comes back after a jittered delay (so the
  losers do not collide again) and meets a less busy aggregate.
- **A message is terminated only once its outcome is recorded.** Only after
  ``max_failures`` failures of the handler itself (counted in this process)
  does ``on_poison`` record the failure as an event; the message is then
  terminated. If ``on_poison`` fails too, the message is retried later.

A message that kills the whole process is redelivered after each restart: a
crash loop shows in the log, where a bounded ``max_deliver`` would instead
drop the message without any record.

A handler that returns has done with its message: the loop acks it, a moment later
(:mod:`~sandboxer.workers.late_acks`), so a handler never acks itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import stamina
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from sandboxer import subjects
from sandboxer.bus.guarded_durable import CHECK_EVERY, GuardedDurable
from sandboxer.bus.publish import is_unavailability
from sandboxer.bus.pull_requests import PullRequests, connection_of
from sandboxer.errors import ConcurrencyConflict, FetchFailed
from sandboxer.workers.late_acks import LateAcks

__all__ = ["ConsumerSpec", "fetch_one", "fetch_some", "run_pull_consumer"]

log = logging.getLogger(__name__)

IDLE_POLL = 2.0
"""Seconds one pull request waits for work before the next is sent. A stop does not wait
for it (the request is withdrawn: bus/pull_requests.py), nor does a reconnect (the request
is sent again once the connection is back); a request the server lost without a word
otherwise (a consumer leader killed) is sent again after it and ``pull_requests.GRACE``.
Renewals cost CPU while idle: at 0.5 s, the nine loops of
``sandboxer up`` cost it and nats-server about 10 ms a second more than at 2 s
(docs/performance.md, "Stopping the service")."""

RETRY_PAUSE = 0.5
"""Seconds before a fetch that failed (no consumer leader yet, a reconnect) is tried again."""

MAX_RETRY_DELAY = 5.0
"""Longest wait before a failed message comes back: an election (4-7 s) is retried within it."""

MAX_TRACKED = 10_000
"""Messages whose failures this process remembers at once."""

Handler = Callable[[Msg], Awaitable[None]]
PoisonHook = Callable[[Msg, BaseException], Awaitable[None]]


@dataclass(frozen=True, kw_only=True)
class ConsumerSpec:
    stream: str
    durable: str
    filter_subject: str
    ack_wait: float = 5.0
    """Seconds without a heartbeat before a message goes to another worker."""
    max_failures: int = 5
    """Failures of the handler itself (not of the bus) before ``on_poison`` records the message."""
    concurrency: int = 64
    check_every: float = CHECK_EVERY
    """Seconds between looks at a durable on the events stream (bus/guarded_durable.py)."""

    @property
    def heartbeat_every(self) -> float:
        return max(0.1, self.ack_wait / 3)


def _consumer_config(spec: ConsumerSpec) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=spec.durable,
        name=spec.durable,
        filter_subject=spec.filter_subject,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=spec.ack_wait,
        max_deliver=-1,  # poison is counted here, from the handler's own failures
        max_ack_pending=max(spec.concurrency * 4, 256),
    )


def _guard(spec: ConsumerSpec, nc: Client | None, home: Path | None) -> GuardedDurable | None:
    """A guard for a durable on the events stream, where clients may create consumers and so
    redefine it by name (bus/guarded_durable.py); the work queues are the service's alone."""
    if spec.stream != subjects.EVENTS_STREAM:
        return None
    if nc is None or home is None:
        raise TypeError(f"{spec.durable} is on the events stream: its guard needs nc and home")
    return GuardedDurable(
        nc, spec.stream, _consumer_config(spec), home=home, check_every=spec.check_every
    )


async def _ensure_consumer(
    js: JetStreamContext, spec: ConsumerSpec, guard: GuardedDurable | None
) -> None:
    """Create-or-update the durable (a restarted worker with new settings updates it); one
    on the events stream goes through its guard, which also makes it again if redefined.

    A bus that cannot answer yet (a stream leader being elected, a cluster still
    placing, a reconnect) is waited out, for as long as it takes: a worker that
    gave up here would end its process, and its work would wait for a person.
    """
    async for attempt in stamina.retry_context(
        on=is_unavailability,
        attempts=None,
        timeout=None,
        wait_initial=0.25,
        wait_max=MAX_RETRY_DELAY,
    ):
        with attempt:
            if guard is None:
                await js.add_consumer(spec.stream, _consumer_config(spec))
            else:
                await guard.ensure()


def retry_delay(msg: Msg) -> float:
    """0.25 s after the first delivery, doubling up to :data:`MAX_RETRY_DELAY`."""
    delivered = max(1, msg.metadata.num_delivered)
    return float(min(0.25 * 2 ** min(delivered - 1, 8), MAX_RETRY_DELAY))


FETCH_FAILED = object()
"""What :func:`fetch_one` and :func:`fetch_some` give when the fetch itself failed (not:
nothing to fetch)."""

CHECK_AFTER_FAILURES = 5
"""Fetches failed in a row after which the loop asks whether its consumer still exists."""


async def fetch_one(requests: PullRequests, durable: str) -> Msg | object | None:
    """The next message, as soon as there is one (or None after ``IDLE_POLL``;
    :data:`FETCH_FAILED` as :func:`fetch_some`)."""
    msgs = await fetch_some(requests, durable, 1)
    if not isinstance(msgs, list):
        return msgs
    return msgs[0] if msgs else None


async def fetch_some(requests: PullRequests, durable: str, most: int) -> list[Msg] | object:
    """As soon as there is a message, it and those already waiting behind it, up to ``most``
    of them (and any an earlier request delivered after it was given up on); none after
    ``IDLE_POLL`` (bus/pull_requests.py: one request at a time, so none is left behind
    to hold the next message).
    :data:`FETCH_FAILED` when the fetch itself failed, after a pause: a durable being made
    again by its guard, bus/guarded_durable.py, refuses a request ("no responders").

    So a burst of commands costs a pull request for each batch of them, not one for each
    (docs/performance.md#the-bursts).
    """
    try:
        return await requests.fetch(most, IDLE_POLL)
    except FetchFailed as exc:
        # No consumer leader yet (just created, or mid-election), or reconnecting: wait.
        log.log(logging.INFO if exc.passing else logging.WARNING, "%s: %s; again", durable, exc)
        await asyncio.sleep(RETRY_PAUSE)
        return FETCH_FAILED


class _Room:
    """Handlers in flight, ``size`` at most: how many more may start now, and a wait for
    one to end. A count, not a semaphore taken slot by slot: each fetch asks for all the
    room there is, and 64 acquires and releases around every message cost about 70 µs of
    the loop, on the path of every message (measured 2026-12-06)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.busy = 0
        self._freed = asyncio.Event()

    @property
    def free(self) -> int:
        return self.size - self.busy

    async def wait(self) -> None:
        while self.busy >= self.size:
            self._freed.clear()
            await self._freed.wait()

    def take(self) -> None:
        self.busy += 1

    def give_back(self) -> None:
        self.busy -= 1
        self._freed.set()


async def _remake_if_gone(
    js: JetStreamContext, spec: ConsumerSpec, guard: GuardedDurable | None
) -> None:
    """Make the consumer again when it no longer exists (deleted by hand, or lost with a
    stream's state): fetching from a consumer that is gone fails for ever, and the worker
    would look alive doing nothing. Its pull requests need nothing new: they name it."""
    try:
        await js.consumer_info(spec.stream, spec.durable)
        return
    except NotFoundError:
        log.warning("%s: its consumer is gone; making it again", spec.durable)
    except NatsError:
        return  # the bus is not answering: the fetches go on waiting for it
    await _ensure_consumer(js, spec, guard)


_BEATS: set[asyncio.Task[None]] = set()
"""Heartbeats being sent (the loop keeps only weak references to tasks)."""


@contextlib.contextmanager
def _heartbeat(msg: Msg, every: float) -> Iterator[None]:
    """Tell JetStream the message is still being worked on, every ``every`` seconds, until
    the block ends. A timer, not a task per message: a burst's commands and jobs are
    handled in a few milliseconds each, and a task made and cancelled for each cost about
    three times what the timer does (measured 2026-12-06: 25 against 7 µs)."""
    loop = asyncio.get_running_loop()

    async def send() -> None:
        # A lost beat is harmless while the next one arrives within ack_wait.
        with contextlib.suppress(NatsError):
            if not msg.is_acked:
                await msg.in_progress()

    def beat() -> None:
        task = loop.create_task(send())
        _BEATS.add(task)
        task.add_done_callback(_BEATS.discard)
        timer[0] = loop.call_later(every, beat)

    timer = [loop.call_later(every, beat)]  # the next beat's, re-armed by each beat
    try:
        yield
    finally:
        timer[0].cancel()


async def _settle(what: Callable[[], Awaitable[None]], msg: Msg) -> None:
    """Ack, nak or term; if that is lost (reconnecting), ack_wait redelivers the message."""
    try:
        await what()
    except NatsError as exc:
        log.warning("could not settle %s: %r; it will be redelivered", msg.subject, exc)


class _Outcomes:
    """Settles each handled message: acked when its handler returns (a moment later:
    workers/late_acks.py), nakked, or past its failures recorded and terminated when it
    raises."""

    def __init__(
        self, spec: ConsumerSpec, handler: Handler, on_poison: PoisonHook, acks: LateAcks
    ) -> None:
        self.spec = spec
        self.handler = handler
        self.on_poison = on_poison
        self.acks = acks
        self.failures: dict[int, int] = {}  # stream sequence -> handler failures seen here

    async def handle(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        try:
            with _heartbeat(msg, self.spec.heartbeat_every):
                await self.handler(msg)
        except Exception as exc:
            await self._failed(msg, seq, exc)
        else:
            self.failures.pop(seq, None)
            self.acks.ack(msg)

    async def _failed(self, msg: Msg, seq: int, exc: Exception) -> None:
        name = self.spec.durable
        if is_unavailability(exc):
            log.warning(
                "%s: %s waits for the bus (%s); retrying in %.1f s",
                name,
                msg.subject,
                exc,
                retry_delay(msg),
            )
            await _settle(lambda: msg.nak(delay=retry_delay(msg)), msg)
            return
        if isinstance(exc, ConcurrencyConflict):
            # Other processes' writers (deciding.py takes turns within one), or reads from a
            # replica still catching up: valid commands were rejected internal_error for it.
            delay = retry_delay(msg) * random.uniform(0.5, 1.5)
            # Quiet while it is ordinary contention; loud once it keeps happening.
            level = logging.WARNING if msg.metadata.num_delivered > 5 else logging.INFO
            log.log(
                level,
                "%s: %s lost to other writers (%s); again in %.2f s",
                name,
                msg.subject,
                exc,
                delay,
            )
            await _settle(lambda: msg.nak(delay=delay), msg)
            return
        if len(self.failures) >= MAX_TRACKED and seq not in self.failures:
            # Entries of messages another worker finished are never popped here: cap them.
            self.failures.pop(next(iter(self.failures)))
        self.failures[seq] = count = self.failures.get(seq, 0) + 1
        if count < self.spec.max_failures:
            log.warning("%s: %s failed (%s); it will be redelivered", name, msg.subject, exc)
            await _settle(lambda: msg.nak(delay=retry_delay(msg)), msg)
            return
        log.error("%s: giving up on %s after %d failures", name, msg.subject, count, exc_info=exc)
        try:
            await self.on_poison(msg, exc)
        except Exception as hook_exc:
            # Its outcome is not on record: keep the message, and try again later.
            log.warning(
                "%s: recording the failure of %s failed too (%r); it will be retried",
                name,
                msg.subject,
                hook_exc,
            )
            await _settle(lambda: msg.nak(delay=retry_delay(msg)), msg)
            return
        self.failures.pop(seq, None)
        await _settle(msg.term, msg)


async def run_pull_consumer(
    js: JetStreamContext,
    spec: ConsumerSpec,
    handler: Handler,
    on_poison: PoisonHook,
    stop: asyncio.Event,
    *,
    nc: Client | None = None,
    home: Path | None = None,
) -> None:
    """Fetch and handle messages until ``stop`` is set, then finish the ones in flight.
    ``nc`` (the connection ``js`` is of) and ``home`` (the service's): what a durable on the
    events stream needs for its guard (bus/guarded_durable.py)."""
    guard = _guard(spec, nc, home)
    await _ensure_consumer(js, spec, guard)
    requests = PullRequests(connection_of(js), spec.stream, spec.durable)
    await requests.open()
    room = _Room(spec.concurrency)
    in_flight: set[asyncio.Task[None]] = set()
    outcomes = _Outcomes(spec, handler, on_poison, LateAcks(connection_of(js)))

    async def handle(msg: Msg) -> None:
        try:
            await outcomes.handle(msg)
        finally:
            room.give_back()

    failures = 0
    try:
        # The guard looks in a task of its own: no fetch waits for a look, and a remake
        # racing a fetch or an ack loses nothing (bus/guarded_durable.py says why).
        async with (
            guard.watching() if guard else contextlib.nullcontext(),
            requests.withdrawn_on(stop),  # a stop ends the fetch waiting at once
        ):
            while not stop.is_set():
                await room.wait()
                msgs = await fetch_some(requests, spec.durable, room.free)
                failures = failures + 1 if msgs is FETCH_FAILED else 0
                if failures >= CHECK_AFTER_FAILURES:
                    failures = 0
                    await _remake_if_gone(js, spec, guard)
                for msg in msgs if isinstance(msgs, list) else []:
                    # A fetch hands over what an earlier request delivered late as well: one
                    # past the room asked for waits for it, so no more than ``concurrency`` run.
                    await room.wait()
                    room.take()
                    task = asyncio.create_task(handle(msg))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
    finally:
        if in_flight:
            await asyncio.gather(*in_flight, return_exceptions=True)
        await outcomes.acks.flush()
        await requests.close()
