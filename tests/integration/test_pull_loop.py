"""The worker loop against a real JetStream: every message ends with its outcome on record."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig
from nats.js.errors import NotFoundError

from sandboxer.bus.connect import connect
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.pull_requests import PullRequests, connection_of
from sandboxer.bus.streams import ensure_streams
from sandboxer.errors import BusError, FetchFailed, StreamUnavailable
from sandboxer.workers import late_acks, pull_loop
from sandboxer.workers.pull_loop import ConsumerSpec, run_pull_consumer
from tests.ports import closed_port
from tests.waiting import until

pytestmark = pytest.mark.integration


@pytest.fixture
async def js(nats_server: NatsServerProcess) -> AsyncIterator[JetStreamContext]:
    nc = await connect([nats_server.url], name="test")
    jetstream = nc.jetstream()
    await ensure_streams(jetstream)
    yield jetstream
    await nc.drain()


@dataclass
class Recorder:
    """A handler and poison hook whose behaviour each test scripts per message body."""

    fail: Callable[[bytes, int], BaseException | None] = lambda data, n: None
    poison_fails: int = 0
    hold: float = 0.0
    deliveries: dict[bytes, int] = field(default_factory=dict)
    handled: list[bytes] = field(default_factory=list)
    poisoned: list[tuple[bytes, str]] = field(default_factory=list)
    poison_calls: int = 0

    async def handler(self, msg: Msg) -> None:
        n = self.deliveries[msg.data] = self.deliveries.get(msg.data, 0) + 1
        await asyncio.sleep(self.hold)
        error = self.fail(msg.data, n)
        if error is not None:
            raise error
        self.handled.append(msg.data)  # acked by the loop, a moment later

    async def on_poison(self, msg: Msg, exc: BaseException) -> None:
        self.poison_calls += 1
        if self.poison_calls <= self.poison_fails:
            raise StreamUnavailable("the events stream has no leader")
        self.poisoned.append((msg.data, str(exc)))


async def running(
    js: JetStreamContext,
    spec: ConsumerSpec,
    recorder: Recorder,
    body: Callable[[], Awaitable[None]],
) -> None:
    stop = asyncio.Event()
    loop = asyncio.create_task(
        run_pull_consumer(js, spec, recorder.handler, recorder.on_poison, stop)
    )
    try:
        await body()
    finally:
        stop.set()
        await loop


def spec_for(name: str, **overrides: float) -> ConsumerSpec:
    return ConsumerSpec(
        stream="SANDBOXER_JOBS", durable=name, filter_subject=f"sandboxer.job.{name}.>", **overrides
    )  # type: ignore[arg-type]


async def settled(js: JetStreamContext, spec: ConsumerSpec, seconds: float = 5) -> bool:
    """Whether the consumer has nothing pending or unacked within ``seconds``: the server
    takes in an ack a moment after reading it."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        info = await js.consumer_info(spec.stream, spec.durable)
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return True
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(0.02)


async def opened_requests(js: JetStreamContext, spec: ConsumerSpec) -> tuple[Client, PullRequests]:
    """The durable ``spec`` names, made, and pull requests for it, opened (close them)."""
    await js.add_consumer(
        spec.stream,
        ConsumerConfig(durable_name=spec.durable, filter_subject=spec.filter_subject),
    )
    nc = connection_of(js)
    requests = PullRequests(nc, spec.stream, spec.durable)
    await requests.open()
    return nc, requests


async def test_poison_message_is_recorded_once_and_the_loop_keeps_serving(
    js: JetStreamContext,
) -> None:
    spec = spec_for("poison", ack_wait=2, max_failures=3)
    recorder = Recorder(
        fail=lambda data, n: RuntimeError("cannot handle this") if data == b"poison" else None
    )

    async def body() -> None:
        await js.publish("sandboxer.job.poison.a", b"poison")
        await js.publish("sandboxer.job.poison.b", b"fine")
        await until(lambda: bool(recorder.poisoned), 20)
        await js.publish("sandboxer.job.poison.c", b"after")
        await until(lambda: b"after" in recorder.handled, 10)

    await running(js, spec, recorder, body)
    assert recorder.poisoned == [(b"poison", "cannot handle this")]
    assert recorder.deliveries[b"poison"] == spec.max_failures
    assert await settled(js, spec)  # terminated, not left to redeliver forever


async def test_an_unavailable_bus_is_waited_out_never_counted_as_poison(
    js: JetStreamContext,
) -> None:
    """More unavailability failures than max_failures: still handled, never poisoned."""
    spec = spec_for("outage", ack_wait=2, max_failures=2)
    cause = TimeoutError()

    def fail(data: bytes, n: int) -> BaseException | None:
        if n == 1:
            return StreamUnavailable("no leader")
        if n <= 4:  # a bus error raised from a timeout counts as unavailability too
            error = BusError("reading timed out")
            error.__cause__ = cause
            return error
        return None

    recorder = Recorder(fail=fail)

    async def body() -> None:
        await js.publish("sandboxer.job.outage.a", b"job")
        await until(lambda: b"job" in recorder.handled, 20)

    await running(js, spec, recorder, body)
    assert recorder.deliveries[b"job"] == 5
    assert recorder.poisoned == []
    assert await settled(js, spec)


async def test_a_failed_poison_record_keeps_the_message_until_it_is_recorded(
    js: JetStreamContext,
) -> None:
    spec = spec_for("unrecorded", ack_wait=2, max_failures=1)
    recorder = Recorder(fail=lambda data, n: ValueError("bad job"), poison_fails=2)

    async def body() -> None:
        await js.publish("sandboxer.job.unrecorded.a", b"bad")
        await until(lambda: bool(recorder.poisoned), 20)

    await running(js, spec, recorder, body)
    assert recorder.poison_calls == 3  # two failed records, then the one that stuck
    assert recorder.poisoned == [(b"bad", "bad job")]
    assert recorder.deliveries[b"bad"] == 3
    assert await settled(js, spec)


async def test_a_held_message_is_heartbeaten_past_a_short_ack_wait(js: JetStreamContext) -> None:
    """The loop itself keeps a slow handler's message: no handler calls in_progress()."""
    spec = spec_for("slow", ack_wait=1)
    recorder = Recorder(hold=3.5)

    async def body() -> None:
        await js.publish("sandboxer.job.slow.a", b"slow")
        await until(lambda: b"slow" in recorder.handled, 10)

    await running(js, spec, recorder, body)
    assert recorder.deliveries == {b"slow": 1}
    assert await settled(js, spec)


async def test_a_consumer_deleted_under_the_loop_is_made_again(js: JetStreamContext) -> None:
    """Fetching from a consumer that is gone failed for ever, the worker looking alive."""
    spec = spec_for("deleted")
    recorder = Recorder()

    async def body() -> None:
        await js.publish("sandboxer.job.deleted.a", b"before")
        await until(lambda: b"before" in recorder.handled, 10)
        await js.delete_consumer(spec.stream, spec.durable)
        await js.publish("sandboxer.job.deleted.b", b"after")
        await until(lambda: b"after" in recorder.handled, 30)

    await running(js, spec, recorder, body)


async def waiting_fetches(js: JetStreamContext, spec: ConsumerSpec) -> int:
    """Pull requests the server holds for the consumer (0 while it is not made yet)."""
    try:
        return (await js.consumer_info(spec.stream, spec.durable)).num_waiting or 0
    except NotFoundError:
        return 0


async def test_a_message_arriving_as_the_loop_stops_is_handled_once(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Published the moment stop is set: handled here, or by the next run, and once. The
    stop does not wait out the poll (30 s here): it withdraws the pull request. A message
    the server gave a request it took in only after the withdrawal comes back after
    ``ack_wait`` (bus/pull_requests.py says why that is rare, and cannot be ruled out), so
    the wait below outlasts one ``ack_wait``. Until 2026-12-07 a stop waited the fetch out."""
    monkeypatch.setattr(pull_loop, "IDLE_POLL", 30.0)
    spec = spec_for("racing", ack_wait=3)
    recorder = Recorder()
    for n in range(20):
        stop = asyncio.Event()
        loop = asyncio.create_task(
            run_pull_consumer(js, spec, recorder.handler, recorder.on_poison, stop)
        )
        async with asyncio.timeout(10):
            while not await waiting_fetches(js, spec):
                await asyncio.sleep(0.01)
        published = asyncio.create_task(js.publish(f"sandboxer.job.racing.{n}", b"%d" % n))
        for _ in range(n % 4):  # vary who is first
            await asyncio.sleep(0)
        stop.set()
        await published
        await asyncio.wait_for(loop, 10)
        info = await js.consumer_info(spec.stream, spec.durable)
        assert not info.num_waiting  # the request was withdrawn, not left to expire

    async def body() -> None:
        # One message left delivered to no one comes back after ack_wait (3 s).
        await until(lambda: len(recorder.handled) == 20, 10)

    await running(js, spec, recorder, body)
    assert sorted(recorder.handled, key=int) == [b"%d" % n for n in range(20)]
    assert all(count == 1 for count in recorder.deliveries.values())
    assert await settled(js, spec)


async def test_a_handled_message_is_acked_after_its_handler_returns_and_only_then(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop acks what a handler returned from, a moment later; a handler still running
    holds its message unacked (its heartbeat keeps it), and one that raised is not acked."""
    monkeypatch.setattr(late_acks, "ACK_AFTER", 0.05)
    spec = spec_for("acking", ack_wait=3, max_failures=100)
    release = asyncio.Event()

    class Holding(Recorder):
        async def handler(self, msg: Msg) -> None:
            if msg.data == b"held":
                await release.wait()
            await super().handler(msg)

    recorder = Holding(fail=lambda data, n: RuntimeError("no") if data == b"bad" else None)

    async def body() -> None:
        await js.publish("sandboxer.job.acking.a", b"done")
        await js.publish("sandboxer.job.acking.b", b"held")
        await js.publish("sandboxer.job.acking.c", b"bad")
        await until(lambda: b"done" in recorder.handled and b"bad" in recorder.deliveries, 10)
        await holding(js, spec.stream, 2)  # "done" acked, "held" and "bad" not
        release.set()
        await until(lambda: b"held" in recorder.handled, 5)
        await holding(js, spec.stream, 1)  # "bad" stays

    await running(js, spec, recorder, body)
    assert recorder.deliveries[b"done"] == recorder.deliveries[b"held"] == 1


async def test_a_stopping_loop_sends_the_acks_it_was_holding_at_once(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Acks held for later go out when the loop stops, not lost with it: the next loop (or
    another worker) is not handed the same messages again."""
    monkeypatch.setattr(late_acks, "ACK_AFTER", 60.0)  # never by the timer in this test
    spec = spec_for("stopping", ack_wait=2)
    recorder = Recorder()

    async def body() -> None:
        for n in range(5):
            await js.publish(f"sandboxer.job.stopping.{n}", b"%d" % n)
        await until(lambda: len(recorder.handled) == 5, 10)
        assert await js_messages(js, spec.stream) == 5  # handled, their acks held

    await running(js, spec, recorder, body)
    await holding(js, spec.stream, 0)  # taken in a moment after the loop ended
    again = Recorder()
    await running(js, spec, again, lambda: asyncio.sleep(spec.ack_wait + 0.5))
    assert again.handled == []


async def js_messages(js: JetStreamContext, stream: str) -> int:
    """Messages a work-queue stream still holds: those not acked yet."""
    return (await js.stream_info(stream)).state.messages


async def holding(js: JetStreamContext, stream: str, count: int, seconds: float = 5) -> None:
    """Until the work-queue stream holds ``count`` messages (AssertionError after ``seconds``)."""
    async with asyncio.timeout(seconds):
        while await js_messages(js, stream) != count:
            await asyncio.sleep(0.01)


async def test_a_burst_is_fetched_in_batches_never_past_the_concurrency(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages waiting when the loop starts are taken a batch at a time, as many as it has
    free slots for: fewer pull requests than messages, and never more at once than its
    ``concurrency``; each handled once."""
    spec = ConsumerSpec(
        stream="SANDBOXER_JOBS",
        durable="burst",
        filter_subject="sandboxer.job.burst.>",
        concurrency=8,
    )
    for n in range(40):
        await js.publish(f"sandboxer.job.burst.{n}", b"%d" % n)
    fetches: list[int] = []
    fetch_some = pull_loop.fetch_some

    async def counted(requests: PullRequests, durable: str, most: int) -> list[Msg] | object:
        fetches.append(most)
        return await fetch_some(requests, durable, most)

    monkeypatch.setattr(pull_loop, "fetch_some", counted)
    running_now = 0
    most_at_once = 0
    recorder = Recorder()

    async def handler(msg: Msg) -> None:
        nonlocal running_now, most_at_once
        running_now += 1
        most_at_once = max(most_at_once, running_now)
        try:
            await asyncio.sleep(0.05)
            await recorder.handler(msg)
        finally:
            running_now -= 1

    stop = asyncio.Event()
    loop = asyncio.create_task(run_pull_consumer(js, spec, handler, recorder.on_poison, stop))
    try:
        await until(lambda: len(recorder.handled) == 40, 20)
    finally:
        stop.set()
        await loop
    assert sorted(recorder.handled, key=int) == [b"%d" % n for n in range(40)]
    assert all(count == 1 for count in recorder.deliveries.values())
    assert most_at_once == spec.concurrency
    assert max(fetches) == spec.concurrency  # the first fetch asks for every free slot
    assert len(fetches) < 40
    assert await settled(js, spec)


async def test_a_fetch_of_many_returns_with_its_first_message(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle fetch for many does not wait out its poll for the rest once one message is
    in: an idle service answers its first command as soon as with one at a time."""
    monkeypatch.setattr(pull_loop, "IDLE_POLL", 30.0)
    spec = spec_for("first")
    await js.add_consumer(
        spec.stream,
        ConsumerConfig(durable_name=spec.durable, filter_subject=spec.filter_subject),
    )
    requests = PullRequests(connection_of(js), spec.stream, spec.durable)
    await requests.open()

    async def publish_soon() -> None:
        await asyncio.sleep(0.1)
        await js.publish("sandboxer.job.first.a", b"first")

    publishing = asyncio.create_task(publish_soon())
    async with asyncio.timeout(15):  # half the poll: it came back with the message, not after
        msgs = await pull_loop.fetch_some(requests, spec.durable, 10)
    await publishing
    assert isinstance(msgs, list)
    assert [msg.data for msg in msgs] == [b"first"]
    await msgs[0].ack()
    await requests.close()


async def test_a_command_after_an_idle_poll_is_not_held_for_a_whole_poll(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After polls that ran out idle, two messages a moment apart are each handled at once,
    and the server never holds more than one pull request of the loop. (nats-py's fetch
    of many left a request behind after an idle poll, which took the next message but one
    and held it until the request expired: a destroy right after its create waited about
    half a second. bus/pull_requests.py)"""
    monkeypatch.setattr(pull_loop, "IDLE_POLL", 1.0)
    spec = spec_for("idle")
    recorder = Recorder()
    held: list[int] = []

    async def body() -> None:
        for _ in range(45):  # across four polls' ends, each a chance to leave one behind
            held.append(await waiting_fetches(js, spec))
            await asyncio.sleep(0.1)
        for name in (b"first", b"second"):
            await js.publish(f"sandboxer.job.idle.{name.decode()}", name)
            # Half the poll: a message held by a request left behind waits out the poll.
            await until(lambda name=name: name in recorder.handled, 0.5)  # type: ignore[misc]
            held.append(await waiting_fetches(js, spec))

    await running(js, spec, recorder, body)
    assert recorder.handled == [b"first", b"second"]
    assert max(held) <= 1


async def test_a_status_for_an_earlier_request_does_not_end_the_one_waiting(
    js: JetStreamContext,
) -> None:
    """Each pull request has its own reply subject: a late ``408`` of one given up on (a
    lost connection) is dropped, and the request waiting still hands over its message."""
    spec = spec_for("stale")
    nc, requests = await opened_requests(js, spec)
    try:
        fetching = asyncio.create_task(requests.fetch(10, 20.0))
        await asyncio.sleep(0.1)
        stale = f"{requests.inbox}.0"  # no request of these has that number
        await nc.publish(stale, b"", headers={"Status": "408", "Description": "Request Timeout"})
        await asyncio.sleep(0.1)
        assert not fetching.done()
        await js.publish("sandboxer.job.stale.a", b"a")
        async with asyncio.timeout(10):  # half its wait: with the message, not after
            msgs = await fetching
        assert [msg.data for msg in msgs] == [b"a"]
        await msgs[0].ack()
    finally:
        await requests.close()


async def test_a_pull_request_to_a_consumer_that_is_not_there_fails_and_says_so(
    js: JetStreamContext,
) -> None:
    """No consumer answers the request ("no responders"): the fetch fails at once, as a
    passing failure (a durable being made again, a consumer not led yet), not after its
    wait, and the loop's failure count takes it from there."""
    requests = PullRequests(connection_of(js), "SANDBOXER_JOBS", "nobody")
    await requests.open()
    try:
        async with asyncio.timeout(10):  # half the wait: refused, not waited out
            with pytest.raises(FetchFailed) as failed:
                await requests.fetch(5, 20.0)
        assert failed.value.passing
        assert "SANDBOXER_JOBS.nobody" in str(failed.value)
    finally:
        await requests.close()


async def test_the_loop_serves_again_once_its_server_is_back(tmp_path: Path) -> None:
    """The only server stops while the loop waits on a pull request, and starts again on
    the same port and store: the request died with it, no status will come, and the loop
    asks again once the connection is back. A message published then is handled once."""
    store = tmp_path / "nats"
    port = closed_port()  # not the kernel's pick: it is taken again a second after the stop
    server = await NatsServerProcess(store, port=port, server_name="pull-restart").start()
    nc = await connect([server.url], name="test")
    js = nc.jetstream()
    spec = spec_for("restart")
    recorder = Recorder()
    try:
        await ensure_streams(js)

        async def body() -> None:
            nonlocal server
            await js.publish("sandboxer.job.restart.a", b"before")
            await until(lambda: b"before" in recorder.handled, 10)
            await server.stop()
            await asyncio.sleep(1.0)  # the request in flight is gone with the server
            server = await NatsServerProcess(store, port=port, server_name="pull-restart").start()
            await until(lambda: nc.is_connected, 30)
            await js.publish("sandboxer.job.restart.b", b"after")
            await until(lambda: b"after" in recorder.handled, 30)

        await running(js, spec, recorder, body)
        assert recorder.handled == [b"before", b"after"]
        assert all(count == 1 for count in recorder.deliveries.values())
    finally:
        await nc.close()
        await server.stop()


async def test_a_request_lost_with_its_server_is_sent_again_as_soon_as_the_server_is_back(
    tmp_path: Path,
) -> None:
    """The server is killed -9 while a fetch waits on a pull request it holds, and started
    again on the same port and store: the request died with it, and no status will ever end
    it. The connection's reconnect ends the wait (bus/reconnects.py), so the loop asks
    again at once, and a message published then is handed over long before the lost
    request's 60 s are up (it came after them, 2 to 3 s for the pull loops, until
    2026-12-07)."""
    store = tmp_path / "nats"
    port = closed_port()
    server = await NatsServerProcess(store, port=port, server_name="pull-lost").start()
    nc = await connect([server.url], name="test")
    js = nc.jetstream()
    spec = spec_for("lost")
    requests = PullRequests(nc, spec.stream, spec.durable)
    try:
        await ensure_streams(js)
        await js.add_consumer(
            spec.stream,
            ConsumerConfig(durable_name=spec.durable, filter_subject=spec.filter_subject),
        )
        await requests.open()
        waiting = asyncio.create_task(requests.fetch(5, 60.0))
        await asyncio.sleep(0.2)  # the request is held
        await server.kill()
        server = await NatsServerProcess(store, port=port, server_name="pull-lost").start()
        async with asyncio.timeout(20):  # a third of the lost request's wait
            assert await waiting == []  # ended by the reconnect, with nothing
            await js.publish("sandboxer.job.lost.a", b"after")
            msgs = await requests.fetch(5, 60.0)
        assert [msg.data for msg in msgs] == [b"after"]
        await msgs[0].ack()
        assert requests.requests_sent == 2
    finally:
        await requests.close()
        await nc.close()
        await server.stop()


async def test_a_message_an_earlier_request_was_given_is_not_held_until_this_one_ends(
    js: JetStreamContext,
) -> None:
    """The server holds an earlier request of ours (one a reconnect left behind, sent here
    by hand on the same inbox) as well as the fetch's own. The next message goes to the
    earlier one, so no end of the fetch's request comes with it: the fetch hands it over at
    once all the same, not when its own request expires 60 s on."""
    spec = spec_for("earlier")
    nc, requests = await opened_requests(js, spec)
    try:
        earlier = {"batch": 5, "no_wait": True, "expires": int(60e9)}
        await nc.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{spec.stream}.{spec.durable}",
            json.dumps(earlier).encode(),
            f"{requests.inbox}.0",
        )
        await nc.flush()
        fetching = asyncio.create_task(requests.fetch(5, 60.0))
        await asyncio.sleep(0.2)  # both requests held, the earlier first in line
        await js.publish("sandboxer.job.earlier.a", b"a")
        async with asyncio.timeout(20):  # a third of the fetch's own request
            msgs = await fetching
        assert [msg.data for msg in msgs] == [b"a"]
        await msgs[0].ack()
    finally:
        await requests.close()


async def test_a_request_refused_for_others_pending_lingers_for_one_instead_of_spinning(
    js: JetStreamContext,
) -> None:
    """Another process's request waits for more than there is (here: its consumer may not
    deliver past ``max_ack_pending``), so the server refuses a no-wait request at once
    (``408 Requests Pending``). The fetch then asks once more, lingering for one message,
    and ends empty at its wait: two requests, not a loop of refusals. The waiting message
    goes to the older request once it can."""
    spec = spec_for("pending")
    await js.add_consumer(
        spec.stream,
        ConsumerConfig(
            durable_name=spec.durable, filter_subject=spec.filter_subject, max_ack_pending=1
        ),
    )
    nc = connection_of(js)
    first, second = (PullRequests(nc, spec.stream, spec.durable) for _ in range(2))
    await first.open()
    await second.open()
    try:
        await js.publish("sandboxer.job.pending.a", b"a")
        [held] = await first.fetch(10, 1.0)  # unacknowledged: the consumer is at its limit
        await js.publish("sandboxer.job.pending.b", b"b")
        # With the consumer at its limit, the server ends a request that has its messages
        # only at its expiry, not with a 404: so the waits here are short.
        waiting = asyncio.create_task(first.fetch(10, 2.0))
        await asyncio.sleep(0.2)
        assert await second.fetch(10, 1.0) == []
        assert second.requests_sent == 2  # the refused one, then one lingering for one
        await held.ack()
        async with asyncio.timeout(10):
            msgs = await waiting
        assert [msg.data for msg in msgs] == [b"b"]
        await msgs[0].ack()
    finally:
        await first.close()
        await second.close()
