"""Commands per second through the control worker, with 1 and with 2 control processes.

The command is ``add_credits``, each to a project of its own (so no two
commands contend for one account's expected sequence): the control worker
loads the account, decides, appends ``credits_added`` and acks, the cheapest
command that reaches a terminal event. The figure is COMMANDS divided by the
time from the first publish to the last terminal event (``credits_added`` or
``rejected``, watched on the events' subjects), with at most WINDOW publishes
awaiting their JetStream ack at once.

The control workers run as ``sandboxer worker control`` processes, the
projector and the meter in one ``sandboxer worker projector meter`` process,
each configuration on a fresh nats-server. Baseline, in the same run: the same
number of messages of the same size published the same way to a plain stream
and consumed (fetched and acked) by one pull consumer, nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path

import msgspec
from _harness import (
    main,
    nats,
    progress,
    start_sandboxer,
    stop_process,
    tempdir,
    until_healthy,
)
from _table import Row
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from sandboxer import subjects
from sandboxer.bus.connect import connect
from sandboxer.client import SandboxerClient

COMMANDS = 4000
WINDOW = 256
ACTOR = {"type": "adm", "id": "bench"}
TERMINAL = {"credits_added", "rejected"}


def add_credits(project: str) -> tuple[str, bytes]:
    command_id = uuid.uuid4().hex
    body = {"command_id": command_id, "actor": ACTOR, "project": project, "amount": 1}
    return command_id, msgspec.json.encode(body)


async def publish_all(js, subject: str, bodies: list[tuple[str, bytes]]) -> None:  # type: ignore[no-untyped-def]
    """Awaited JetStream publishes, WINDOW at a time, each with its message id."""
    window = asyncio.Semaphore(WINDOW)

    async def one(message_id: str, body: bytes) -> None:
        async with window:
            await js.publish(subject, body, headers={"Nats-Msg-Id": message_id})

    await asyncio.gather(*(one(mid, body) for mid, body in bodies))


def read_log(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else ""


async def wait_roles(log: Path, count: int, within: float = 60) -> None:
    """Until ``count`` processes logging to ``log`` said they run their roles."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        text = await asyncio.to_thread(read_log, log)
        if text.count("running roles: control") >= count:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the control workers did not start within {within:g} s; see {log}")


async def through_control(tmp: Path, controls: int) -> float:
    """Commands per second with ``controls`` control worker processes."""
    async with nats(tmp) as server:
        home = tmp / "home"
        home.mkdir()
        processes = [
            start_sandboxer(home, server.url, ["worker", "projector", "meter"], "others.log")
        ]
        processes += [
            start_sandboxer(home, server.url, ["worker", "control"], "control.log")
            for _ in range(controls)
        ]
        client = await SandboxerClient.connect([server.url], actor=ACTOR)
        nc = await connect([server.url], name="bench-commands")
        try:
            await until_healthy(client, processes, home / "others.log")
            await wait_roles(home / "control.log", controls)
            await client.account_command("add_credits", "warmup", amount=1)  # consumers, imports
            bodies = [add_credits(f"bench{i:05d}") for i in range(COMMANDS)]
            waiting = {command_id for command_id, _ in bodies}
            rejected: list[str] = []
            done = asyncio.Event()

            async def on_event(msg) -> None:  # type: ignore[no-untyped-def]
                if msg.subject.rsplit(".", 1)[-1] not in TERMINAL:
                    return
                event = msgspec.json.decode(msg.data)
                if event.get("command_id") in waiting:
                    waiting.discard(event["command_id"])
                    if event.get("type") == "rejected" or msg.subject.endswith(".rejected"):
                        rejected.append(str(event.get("reason")))
                    if not waiting:
                        done.set()

            watch = await nc.subscribe(subjects.EVENTS, cb=on_event, pending_msgs_limit=-1)
            await nc.flush()
            js = nc.jetstream()
            progress(f"commands: {COMMANDS} add_credits through {controls} control worker(s)")
            started = time.perf_counter()
            await publish_all(js, subjects.command_subject("add_credits"), bodies)
            async with asyncio.timeout(300):
                await done.wait()
            elapsed = time.perf_counter() - started
            await watch.unsubscribe()
            if rejected:
                raise RuntimeError(f"{len(rejected)} commands rejected, e.g. {rejected[0]}")
            return COMMANDS / elapsed
        finally:
            await client.close()
            await nc.close()
            for process in processes:
                await stop_process(process)


async def raw_jetstream(tmp: Path) -> float:
    """Messages per second: awaited publish of COMMANDS messages and their pull consume."""
    async with nats(tmp) as server:
        nc = await connect([server.url], name="bench-raw")
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="BENCH_RAW", subjects=["bench.raw.>"]))
        await js.add_consumer(
            "BENCH_RAW",
            ConsumerConfig(durable_name="raw", ack_policy=AckPolicy.EXPLICIT, max_ack_pending=-1),
        )
        psub = await js.pull_subscribe_bind("raw", stream="BENCH_RAW")
        bodies = [add_credits(f"bench{i:05d}") for i in range(COMMANDS)]
        progress(f"commands baseline: {COMMANDS} raw JetStream publishes and their consume")

        async def consume() -> None:
            seen = 0
            while seen < COMMANDS:
                with contextlib.suppress(TimeoutError, NatsTimeout):
                    for msg in await psub.fetch(batch=64, timeout=0.05):
                        await msg.ack()
                        seen += 1

        started = time.perf_counter()
        await asyncio.gather(publish_all(js, "bench.raw.add_credits", bodies), consume())
        elapsed = time.perf_counter() - started
        await nc.close()
        return COMMANDS / elapsed


async def rows() -> list[Row]:
    with tempdir() as raw_tmp:
        tmp = Path(raw_tmp)
        (tmp / "raw").mkdir()
        baseline = await raw_jetstream(tmp / "raw")
        out = []
        for controls in (1, 2):
            (tmp / f"c{controls}").mkdir()
            rate = await through_control(tmp / f"c{controls}", controls)
            out.append(
                Row(
                    f"commands/s through {controls} control worker{'s' if controls > 1 else ''}",
                    "cmd/s",
                    rate,
                    baseline,
                    "raw JetStream publish+consume",
                )
            )
    return out


if __name__ == "__main__":
    main(rows)
