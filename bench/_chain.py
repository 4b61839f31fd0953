"""A warm create's chain of JetStream steps with no work around them: the skeleton.

By the contract (a durable command, one event per transition, every append
carrying its aggregate's expected last sequence) a create served by a warm
pool is seven JetStream publishes, three round trips in a row: the command;
``requested``, ``routed`` and the provision job at once, as the event store sends
one decision's events and the control worker a create's job with them; and
``provisioning``, the member's ``claimed`` and ``ready`` at once, as the extension
worker sends a claim with nothing to apply (workers/claim_ahead.py;
docs/performance.md, "The warm path"). This module runs that chain and nothing else,
with nats-py, the pull requests the real loop sends (bus/pull_requests.py) and the
publish the service awaits its acks with (bus/ack_inbox.py; until 2026-12-07, nats-py's
own): no other sandboxer code, no decoding beyond finding an id, no decisions.

- the client subscribes to the sandbox's events, then publishes the command
  (awaiting its ack);
- the "control" consumer fetches it, appends ``requested`` (expecting
  nothing before it) and, sent with it, ``routed`` (expecting ``requested``
  right before it; sent again in turn if not) and the job (carrying where
  ``routed`` is guessed to land); its loop acks the command 20 ms later;
- the "worker" consumer fetches the job and appends ``provisioning``, the pool
  member's ``claimed`` on the member's aggregate and ``ready``, in one write, each
  after the first expecting the one before it as the stream's last message (when
  one of this process's publishes awaits its ack, ``provisioning`` beside
  ``claimed``, then ``ready``, as before the night of 2026-12-07); its loop acks
  the job 20 ms later;
- the client sees ``ready``.

Both consumers run in one process (``python bench/_chain.py --serve URL``), as
control and the extension worker do under ``sandboxer up``, with the real
pull loop's mechanics: a durable pull consumer with explicit ack, each fetch
taking what waits (up to 64) with the loop's own pull requests, each message
handled in a task of its own and acked 20 ms after its handling, with what else
was handled meanwhile (workers/late_acks.py; until the night of 2026-12-07 the
skeleton acked at once, which cost nats-server CPU inside the chain that the
service no longer spends there). The streams are scratch ones of this module
(``BENCH_CHAIN_*``), so a service running beside it on the same server is
untouched.

``python bench/_chain.py --alone [RUNS]`` times the chain by itself against a
private nats-server: each run after 50 ms idle (as bench_create times it),
then as many back to back. ``--shortest`` times, in the same run, the shortest
chain DESIGN.md allows beside it: the same chain without ``routed`` (its route
would be inside ``requested``): three round trips in a row, as ours, one publish
fewer. The job stays a message of its own, sent with ``requested``: DESIGN.md gives
each extension a work queue of its own, so that any number of worker processes share
its work (docs/performance.md, "The warm path").
``--burst [N]`` starts N chains at once (100 unless given), then N of the shortest,
three times each, as ``bench_create.py`` does before each burst of creates.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

from sandboxer.bus.ack_inbox import Outgoing, publish_all_for_ack, publish_for_ack
from sandboxer.bus.pull_requests import PullRequests, connection_of
from sandboxer.errors import FetchFailed
from sandboxer.workers.late_acks import LateAcks

CMD_STREAM, CMD_SUBJECT = "BENCH_CHAIN_CMD", "bench.chain.cmd"
EVT_STREAM, EVT_PREFIX = "BENCH_CHAIN_EVT", "bench.chain.evt"
JOB_STREAM, JOB_SUBJECT = "BENCH_CHAIN_JOB", "bench.chain.job"
IDLE_POLL = 2.0  # as sandboxer/workers/pull_loop.py: how long one fetch waits for work
FETCH_MOST = 64  # as pull_loop: a fetch takes what waits, up to its room for handlers (64)
PAYLOAD = b"x" * 350  # a command, job or event is about this size
RUNNING: set[asyncio.Task[None]] = set()  # the service's handlers in flight
READY_WITHIN = 10.0  # seconds: far beyond any chain, short enough to tell a dead service
SHORTEST = "s-"  # a command id so marked runs the shortest chain (``--shortest``)
STREAM_LAST = [0]  # the highest sequence of the events stream the service saw acknowledged
IN_FLIGHT = [0]  # the service's publishes awaiting their acks


def _streams() -> list[StreamConfig]:
    """The real streams' settings that bear on a publish: file storage, a duplicate window."""
    return [
        StreamConfig(
            name=name,
            subjects=[subject],
            retention=retention,
            storage=StorageType.FILE,
            num_replicas=1,
            duplicate_window=120,
        )
        for name, subject, retention in (
            (CMD_STREAM, CMD_SUBJECT, RetentionPolicy.WORK_QUEUE),
            (EVT_STREAM, f"{EVT_PREFIX}.>", RetentionPolicy.LIMITS),
            (JOB_STREAM, JOB_SUBJECT, RetentionPolicy.WORK_QUEUE),
        )
    ]


def _scope(aggregate: str) -> str:
    return f"{EVT_PREFIX}.{aggregate}.>"


async def _publish(js: JetStreamContext, subject: str, data: bytes, headers: dict[str, str]) -> int:
    """A publish awaited to its ack as the service's are (bus/ack_inbox.py, not nats-py's
    JetStream publish: the skeleton is no slower than our own code at this step); its
    sequence."""
    IN_FLIGHT[0] += 1
    try:
        ack = await publish_for_ack(connection_of(js), subject, data, headers=headers, timeout=5)
    finally:
        IN_FLIGHT[0] -= 1
    return ack.seq


def _event(aggregate: str, kind: str, expected: int) -> Outgoing:
    """An event of ``aggregate`` expecting ``expected`` as its last sequence, ready to send."""
    headers = {
        "Nats-Msg-Id": f"{aggregate}-{kind}",
        "Nats-Expected-Last-Subject-Sequence": str(expected),
        "Nats-Expected-Last-Subject-Sequence-Subject": _scope(aggregate),
    }
    return f"{EVT_PREFIX}.{aggregate}.{kind}", PAYLOAD, headers


async def _append(js: JetStreamContext, aggregate: str, kind: str, expected: int) -> int:
    """One event of ``aggregate``, expecting ``expected`` as its last sequence; its sequence."""
    seq = await _publish(js, *_event(aggregate, kind, expected))
    STREAM_LAST[0] = max(STREAM_LAST[0], seq)
    return seq


async def _decide(js: JetStreamContext, sandbox: str, kinds: list[str]) -> None:
    """The events of a new ``sandbox`` sent at once, as the event store sends one decision's
    (bus/jetstream_store.py), and its job right after them, as the control worker sends a
    create's (docs/protocol.md#jobs): each event after the first expects the one before it
    right before it, at the stream's next sequence as last seen, and the job carries the
    position the last one is guessed to land at. Should the guess be wrong, the rest go in
    turn, and then the job with the right position (a copy of the first, by its id). As the
    store, together only when none of this process's publishes awaits its ack (one that
    does may move the stream past the guess); else one by one, and the job after them."""
    if IN_FLIGHT[0]:
        last = 0
        for kind in kinds:
            last = await _append(js, sandbox, kind, last)
        await _publish(js, *_job(sandbox, last))
        return
    outgoing: list[Outgoing] = []
    for index, kind in enumerate(kinds):
        event = _event(sandbox, kind, STREAM_LAST[0] + index if index else 0)
        if index:
            event[2]["Nats-Expected-Last-Msg-Id"] = outgoing[-1][2]["Nats-Msg-Id"]
        outgoing.append(event)
    outgoing.append(_job(sandbox, STREAM_LAST[0] + len(kinds)))
    IN_FLIGHT[0] += 1
    try:
        acks = await publish_all_for_ack(connection_of(js), outgoing, timeout=5)
    finally:
        IN_FLIGHT[0] -= 1
    last = 0
    for index, ack in enumerate(acks[: len(kinds)]):
        if isinstance(ack, Exception):
            if not index:
                raise ack
            for kind in kinds[index:]:  # the guess was wrong: in turn, as the store does
                last = await _append(js, sandbox, kind, last)
            await _publish(js, *_job(sandbox, last))
            return
        last = ack.seq
        STREAM_LAST[0] = max(STREAM_LAST[0], last)
    if isinstance(acks[-1], Exception):
        await _publish(js, *_job(sandbox, last))


def _job(sandbox: str, last: int) -> Outgoing:
    """The job, carrying the sandbox id and its log position, as a real provision job does."""
    return JOB_SUBJECT, f"{sandbox} {last}\n".encode() + PAYLOAD, {"Nats-Msg-Id": f"{sandbox}-job"}


# -- the service side ---------------------------------------------------------------------------


async def _control(js: JetStreamContext, msg: Msg) -> None:
    sandbox = (msg.headers or {})["Nats-Msg-Id"]  # the command id names the sandbox
    shortest = sandbox.startswith(SHORTEST)  # the shortest chain's route is inside `requested`
    await _decide(js, sandbox, ["requested"] if shortest else ["requested", "routed"])


async def _worker(js: JetStreamContext, msg: Msg) -> None:
    sandbox, routed = msg.data.split(b"\n", 1)[0].decode().split()
    await _provision(js, sandbox, int(routed))


async def _provision(js: JetStreamContext, sandbox: str, after: int) -> None:
    if not IN_FLIGHT[0]:
        await _provision_in_one_write(js, sandbox, after)
        return
    # A fresh member per chain: its aggregate is empty, so the claim expects nothing before it.
    provisioning, _claimed = await asyncio.gather(
        _append(js, sandbox, "provisioning", after),
        _append(js, f"m{sandbox}", "claimed", 0),
    )
    await _append(js, sandbox, "ready", provisioning)


async def _provision_in_one_write(js: JetStreamContext, sandbox: str, after: int) -> None:
    """``provisioning``, the member's ``claimed`` and ``ready`` in one write, each after the
    first expecting the one before it as the stream's last message, and ``ready`` its
    sandbox's last sequence where ``provisioning`` is guessed to land (workers/claim_ahead.py
    sends them so; the skeleton only when none of this process's publishes awaits its ack, as
    the store sends one decision's events), and what a refusal leaves goes in turn."""
    guess = max(STREAM_LAST[0], after) + 1
    provisioning = _event(sandbox, "provisioning", after)
    claimed = _event(f"m{sandbox}", "claimed", 0)
    claimed[2]["Nats-Expected-Last-Msg-Id"] = provisioning[2]["Nats-Msg-Id"]
    ready = _event(sandbox, "ready", guess)
    ready[2]["Nats-Expected-Last-Msg-Id"] = claimed[2]["Nats-Msg-Id"]
    IN_FLIGHT[0] += 1
    try:
        acks = await publish_all_for_ack(
            connection_of(js), [provisioning, claimed, ready], timeout=5
        )
    finally:
        IN_FLIGHT[0] -= 1
    first, second, third = acks
    if isinstance(first, Exception):
        raise first  # as the chain's own append of it would
    STREAM_LAST[0] = max(STREAM_LAST[0], first.seq)
    if isinstance(second, Exception):
        await _append(js, f"m{sandbox}", "claimed", 0)
    if isinstance(second, Exception) or isinstance(third, Exception):
        await _append(js, sandbox, "ready", first.seq)
        return
    STREAM_LAST[0] = max(STREAM_LAST[0], second.seq, third.seq)


async def _pull_loop(js: JetStreamContext, stream: str, durable: str, role: str) -> None:
    """Fetch what waits, up to ``FETCH_MOST`` at a time, each message handled in its own task:
    with the pull requests the real loop sends (bus/pull_requests.py, one at a time, each
    waited to its end), the one piece of sandboxer here. nats-py's own fetch of many left a
    request behind after an idle poll, which held the next message but one until it
    expired: the skeleton's chain then took 250-380 ms in most runs of ``make bench``."""
    await js.add_consumer(
        stream,
        ConsumerConfig(
            durable_name=durable, name=durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=5.0
        ),
    )
    requests = PullRequests(connection_of(js), stream, durable)
    await requests.open()
    acks = LateAcks(connection_of(js))
    handle = _control if role == "control" else _worker

    async def handled(msg: Msg) -> None:
        await handle(js, msg)
        acks.ack(msg)  # as the real loop does once its handler returns

    while True:
        try:
            msgs = await requests.fetch(FETCH_MOST, IDLE_POLL)
        except (
            FetchFailed
        ) as exc:  # no consumer leader yet, or reconnecting: wait, as pull_loop does
            print(f"{durable}: fetching failed: {exc!r}", file=sys.stderr, flush=True)
            await asyncio.sleep(IDLE_POLL)
            continue
        for msg in msgs:
            task = asyncio.create_task(handled(msg))
            RUNNING.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(_done)


def _done(task: asyncio.Task[None]) -> None:
    """A failed chain shows in the log (its client times out and says where the log is)."""
    RUNNING.discard(task)
    if not task.cancelled() and task.exception() is not None:
        print(f"a handler failed: {task.exception()!r}", file=sys.stderr, flush=True)


async def serve(url: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    loops = [
        asyncio.create_task(_pull_loop(js, CMD_STREAM, "bench-chain-control", "control")),
        asyncio.create_task(_pull_loop(js, JOB_STREAM, "bench-chain-worker", "worker")),
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([*loops, stopping], return_when=asyncio.FIRST_COMPLETED)
    for task in [*loops, stopping]:
        task.cancel()
    ended = await asyncio.gather(*loops, return_exceptions=True)
    await nc.close()
    for outcome in ended:  # a loop that ended on its own ended on an error: show it
        if isinstance(outcome, Exception):
            raise outcome


# -- the client side ----------------------------------------------------------------------------


async def chain_once(nc: NATS, js: JetStreamContext, *, shortest: bool = False) -> float:
    """One chain, in ms: from subscribing to the sandbox's events to seeing its ``ready``."""
    # The command id names the sandbox, and marks the shortest chain's.
    sandbox = f"{SHORTEST if shortest else ''}c{uuid.uuid4().hex[:16]}"
    started = time.perf_counter()
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_event(msg: Msg) -> None:
        if msg.subject.endswith(".ready") and not ready.done():
            ready.set_result(None)

    sub = await nc.subscribe(_scope(sandbox), cb=on_event)
    try:
        await _publish(js, CMD_SUBJECT, PAYLOAD, {"Nats-Msg-Id": sandbox})
        async with asyncio.timeout(READY_WITHIN):
            await ready
    except TimeoutError:
        raise RuntimeError(
            f"the chain's service did not answer within {READY_WITHIN:g} s"
        ) from None
    finally:
        await sub.unsubscribe()
    return (time.perf_counter() - started) * 1000


async def chains_at_once(
    nc: NATS,
    js: JetStreamContext,
    n: int,
    *,
    shortest: bool = False,
    then: Callable[[], Awaitable[object]] | None = None,
) -> float:
    """``n`` chains started at once, in seconds until the last one's ``ready``: a burst of
    pooled creates with no work in it. ``then`` runs after each chain's ``ready`` (a raw
    spawn, for the cold burst's floor: the bus's steps and the spawns, none of our work)."""

    async def one() -> None:
        await chain_once(nc, js, shortest=shortest)
        if then is not None:
            await then()

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return time.perf_counter() - started


@contextlib.asynccontextmanager
async def chain_service(url: str, nc: NATS, log: Path) -> AsyncIterator[int]:
    """The scratch streams and the chain's service process (output in ``log``), answering
    chains when this yields its pid; stopped, and the streams gone, after."""
    js = nc.jetstream()
    for config in _streams():
        await js.add_stream(config)
    with log.open("ab") as out:
        process = subprocess.Popen(  # noqa: ASYNC220 - before anything is timed
            [sys.executable, __file__, "--serve", url],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    from _harness import stop_process  # here: the --serve process needs none of the harness

    try:
        await _until_answering(nc, js, process, log)
        yield process.pid
    finally:
        await stop_process(process)
        for config in _streams():
            with contextlib.suppress(NatsError):
                await js.delete_stream(config.name or "")


async def _until_answering(
    nc: NATS, js: JetStreamContext, process: subprocess.Popen[bytes], log: Path
) -> None:
    """A few chains through, once its consumers exist: the imports and first fetches warmed."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the chain's service exited; see {log}")
        with contextlib.suppress(Exception):
            await js.consumer_info(JOB_STREAM, "bench-chain-worker")
            await js.consumer_info(CMD_STREAM, "bench-chain-control")
            for _ in range(5):
                await chain_once(nc, js)
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the chain's service did not answer within 30 s; see {log}")


@contextlib.asynccontextmanager
async def _private() -> AsyncIterator[tuple[NATS, JetStreamContext]]:
    """A private nats-server with the chain's service on it, and a connection to it."""
    import tempfile

    from _harness import nats as private_nats

    with tempfile.TemporaryDirectory(prefix="sandboxer-chain-") as raw:
        tmp = Path(raw)
        async with private_nats(tmp) as server:
            nc = await nats.connect(server.url)
            try:
                async with chain_service(server.url, nc, tmp / "chain.log"):
                    yield nc, nc.jetstream()
            finally:
                await nc.close()


async def alone(runs: int, *, shortest: bool) -> None:
    """``runs`` chains after 50 ms idle each, then ``runs`` back to back, on a private server;
    with ``shortest``, each beside a run of the shortest chain, alternating."""
    from _harness import summary

    idle: list[float] = []
    short: list[float] = []
    async with _private() as (nc, js):
        for _ in range(runs):
            await asyncio.sleep(0.05)
            idle.append(await chain_once(nc, js))
            if shortest:
                await asyncio.sleep(0.05)
                short.append(await chain_once(nc, js, shortest=True))
        back_to_back = [await chain_once(nc, js) for _ in range(runs)]
    print(f"the chain alone, after 50 ms idle: {summary(idle)}")
    if shortest:
        print(f"the shortest chain, after 50 ms idle: {summary(short)}")
    print(f"the chain alone, back to back:     {summary(back_to_back)}")


async def bursts(n: int) -> None:
    """``n`` chains at once, then ``n`` of the shortest, three rounds, on a private server."""
    async with _private() as (nc, js):
        for _ in range(3):
            for shortest in (False, True):
                await asyncio.sleep(0.3)
                took = await chains_at_once(nc, js, n, shortest=shortest)
                name = "shortest chains" if shortest else "chains"
                print(f"{n} {name} at once: {took:.3f} s", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"] and len(sys.argv) == 3:
        asyncio.run(serve(sys.argv[2]))
    elif sys.argv[1:2] == ["--alone"]:
        numbers = [arg for arg in sys.argv[2:] if arg.isdigit()]
        asyncio.run(
            alone(int(numbers[0]) if numbers else 100, shortest="--shortest" in sys.argv[2:])
        )
    elif sys.argv[1:2] == ["--burst"]:
        numbers = [arg for arg in sys.argv[2:] if arg.isdigit()]
        asyncio.run(bursts(int(numbers[0]) if numbers else 100))
    else:
        sys.exit(
            "usage: python bench/_chain.py --alone [RUNS] [--shortest] | --burst [N]"
            " | --serve NATS_URL"
        )
