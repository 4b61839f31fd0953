"""create -> ready through the bus, cold and from a warm pool, sequential and 100 at once.

Baselines, measured in the same run and interleaved with the creates (so a
noisy neighbour slows both alike): the raw spawn of a bubblewrap sandbox
running ``true`` with the same isolation flags, no bus and no bookkeeping;
and ``docker run --rm --network none`` of a minimal busybox image on a private
dockerd, the tool most users would otherwise reach for. The 100 concurrent
creates are compared with 100 concurrent raw spawns. That burst is made
three times cold and five times from a pool (refilled between): one burst is one
sample, so the row with the target is their p50, and another shows the slowest.
Three more rows say what bounds a burst: the CPU every process of the machine used
during it, spread over the cores (no sharing of that work could make the burst
shorter), the service's own CPU (one event loop, one step after another), and of that
the kernel's part (its system calls: the file system's metadata, cgroups, forks,
pipes and sockets; docs/performance.md#file-system-costs-on-this-machine).

Cold creates use profile.local. Warm ones use a user profile whose pool keeps
100 sandboxes ready, on a fresh service (so the pool's filling never overlaps
the cold figures); the pool is full before any timing and refills between
sequential creates.

What bounds a warm create from below is the bus: it is a chain of JetStream
round trips, each started by a process that was idle a moment before. So the
warm run also times one raw JetStream publish (to a scratch stream, awaiting
its ack) before each create, when the machine has been idle as long as the
create's own first step, beside the same publish made back to back.

And before each warm create, after the same 50 ms idle, it times the chain
itself with no work in it (``_chain.py``): a command published, ``requested``
and ``routed`` appended and the job published right after them (sent together, as
the event store sends one decision's events and a create's job), then ``provisioning``,
a member's ``claimed`` and ``ready`` sent together (as the extension worker sends a claim
with nothing to apply), with the same headers, consumers and processes as the real path,
and no sandboxer code but the pull requests its consumers fetch with
(``bus/pull_requests.py``, as the real loop).
The row "create→ready warm p50 vs the same chain" divides the warm create by
that skeleton: what the service's own work adds to the bus's floor. Beside it,
after the same idle, the shortest chain DESIGN.md allows (the same without
``routed``, its route inside ``requested``: three round trips in a row, one publish fewer;
the job stays a message of its own, since each extension has a work queue of its own): the
floor of any
protocol within that design, so a warm target below it is out of reach on the machine of
that run.

The bursts have their skeletons too, before each burst and after the same quiet:
for the pool's, 100 of those chains started at once (and 100 of the shortest);
for the cold one's, 100 chains at once, each followed by a raw spawn. They are
what a burst costs this machine with none of our work in it, so a burst target
below them, or not far above them, is out of reach on the machine of that run.
"""

from __future__ import annotations

import asyncio
import functools
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _chain import chain_once, chain_service, chains_at_once
from _docker import docker_engine_or_reason, docker_run_true
from _harness import (
    CpuUse,
    Running,
    Unmeasurable,
    WindowCpu,
    cpu_use,
    main,
    nats,
    percentile,
    percentile_rows,
    progress,
    require_tool,
    running_service,
    tempdir,
)
from _pools import pool_profile, wait_pool_full
from _table import Row, Target, failed
from nats.js import JetStreamContext

SEQUENTIAL = 50
DOCKER_RUNS = 20  # ~0.3 s each
CONCURRENT = 100
BURSTS = 5  # one burst is a single sample: the pool's target row is the p50 of several
COLD_BURSTS = 3  # and the cold one's (each takes about 3 s with its teardowns)
POOL_PROFILE = "profile.bench-pool"
RTT_STREAM = "BENCH_RTT"
BACK_TO_BACK = 200

BWRAP_TRUE = [
    "bwrap",
    "--unshare-all",
    "--die-with-parent",
    "--new-session",
    "--ro-bind",
    "/usr",
    "/usr",
    "--symlink",
    "usr/bin",
    "/bin",
    "--symlink",
    "usr/lib",
    "/lib",
    "--symlink",
    "usr/lib64",
    "/lib64",
    "--ro-bind",
    "/etc",
    "/etc",
    "--proc",
    "/proc",
    "--dev",
    "/dev",
    "--tmpfs",
    "/tmp",
    "--clearenv",
    "true",
]


async def bwrap_once() -> float:
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(*BWRAP_TRUE)
    await process.wait()
    if process.returncode != 0:
        raise Unmeasurable(
            f"bwrap exited {process.returncode}: does this kernel allow user namespaces?"
        )
    return (time.perf_counter() - started) * 1000


async def bwrap_concurrent(n: int) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(bwrap_once() for _ in range(n)))
    return time.perf_counter() - started


async def cold(tmp: Path) -> tuple[list[Row], list[float]]:
    """Cold rows, and the docker run samples (reused as the warm rows' second baseline)."""
    rows: list[Row] = []
    docker_ms: list[float] = []
    async with (
        docker_engine_or_reason() as engine,
        nats(tmp) as server,
        running_service(tmp, server.url) as svc,
    ):
        docker_problem = engine if isinstance(engine, str) else None
        client = svc.client
        warm_up = await client.create()  # streams, consumers, imports
        await client.destroy(warm_up["sandbox_id"])
        progress(f"cold: {SEQUENTIAL} sequential creates, each after a raw spawn (and docker run)")
        spawn_ms, create_ms = [], []
        for i in range(SEQUENTIAL):
            spawn_ms.append(await bwrap_once())
            if docker_problem is None and not isinstance(engine, str) and i < DOCKER_RUNS:
                try:
                    docker_ms.append(await docker_run_true(engine))
                except Unmeasurable as exc:
                    docker_problem, docker_ms = str(exc), []
            started = time.perf_counter()
            ready = await client.create()
            create_ms.append((time.perf_counter() - started) * 1000)
            await client.destroy(ready["sandbox_id"])
        rows += percentile_rows(
            "create→ready cold",
            "ms",
            create_ms,
            spawn_ms,
            "raw bwrap `true`",
            Target("<=", 3, "ratio"),
        )
        if docker_problem is None:
            rows += percentile_rows(
                "create→ready cold", "ms", create_ms, docker_ms, "docker run busybox", None
            )
        else:
            rows.append(failed("create→ready cold vs docker run", "ms", docker_problem))
        burst_s: list[float] = []
        used: list[CpuUse] = []
        spawn_s, floor_s = [], []
        async with chain_service(server.url, client.nc, tmp / "chain.log"):
            for burst in range(COLD_BURSTS):
                await asyncio.sleep(0.3)  # the last burst's teardowns settle first
                progress(
                    f"cold: burst {burst + 1} of {COLD_BURSTS}: {CONCURRENT} concurrent raw "
                    f"spawns; {CONCURRENT} chains, each then a spawn; {CONCURRENT} creates"
                )
                spawn_s.append(await bwrap_concurrent(CONCURRENT))
                await asyncio.sleep(0.3)
                floor_s.append(
                    await chains_at_once(client.nc, client.js, CONCURRENT, then=bwrap_once)
                )
                await asyncio.sleep(0.3)
                readies = await timed_burst(svc, client.create, burst_s, used)
                await asyncio.gather(*(client.destroy(r["sandbox_id"]) for r in readies))
        rows += [
            Row(
                f"{CONCURRENT} concurrent creates→all ready, cold, p50 of {COLD_BURSTS} bursts",
                "s",
                percentile(burst_s, 50),
                percentile(spawn_s, 50),
                f"{CONCURRENT} concurrent raw bwrap, p50",
                Target("<=", 1.0),
            ),
            Row(
                f"{CONCURRENT} concurrent creates→all ready, cold, slowest of {COLD_BURSTS} bursts",
                "s",
                max(burst_s),
                max(spawn_s),
                f"{CONCURRENT} concurrent raw bwrap, slowest",
            ),
            Row(
                f"{CONCURRENT} concurrent creates→all ready, cold, p50 vs the same chains and "
                "raw spawns at once, no work",
                "s",
                percentile(burst_s, 50),
                percentile(floor_s, 50),
                f"{CONCURRENT} chains, each then a raw spawn, at once, p50",
            ),
            *burst_cpu_rows("cold", used, burst_s),
        ]
    return rows, docker_ms


async def timed_burst(
    svc: Running,
    create: Callable[[], Awaitable[dict[str, Any]]],
    burst_s: list[float],
    used: list[CpuUse],
) -> list[dict[str, Any]]:
    """``CONCURRENT`` creates at once, until all are ready: their time goes to ``burst_s``,
    the CPU used meanwhile to ``used``; their ``ready`` events are returned."""
    started = time.perf_counter()
    with cpu_use(svc.process.pid) as use:
        readies = await asyncio.gather(*(create() for _ in range(CONCURRENT)))
    burst_s.append(time.perf_counter() - started)
    used.extend(use)
    return readies


def burst_cpu_rows(kind: str, used: list[CpuUse], burst_s: list[float]) -> list[Row]:
    """Where a burst's time is bounded: every process's CPU spread over the machine's cores
    (no sharing of that work makes the burst shorter), and the service's own CPU (its one
    event loop runs it one step after another), each against the burst, p50 of the bursts."""
    return [
        Row(
            f"{CONCURRENT} concurrent creates, {kind}: all processes' CPU over the cores, p50",
            "s",
            percentile([use.over_cores for use in used], 50),
            percentile(burst_s, 50),
            "the burst, p50",
        ),
        Row(
            f"{CONCURRENT} concurrent creates, {kind}: the service's own CPU, p50",
            "s",
            percentile([use.process for use in used], 50),
            percentile(burst_s, 50),
            "the burst, p50",
        ),
        Row(
            f"{CONCURRENT} concurrent creates, {kind}: the service's CPU in the kernel, p50",
            "s",
            percentile([use.process_kernel for use in used], 50),
            percentile([use.process for use in used], 50),
            "the service's own CPU, p50",
        ),
    ]


async def warm(tmp: Path, docker_ms: list[float]) -> list[Row]:
    home = tmp / "home"
    (home / "profiles").mkdir(parents=True)
    (home / "profiles" / f"{POOL_PROFILE}.yaml").write_text(pool_profile(POOL_PROFILE, CONCURRENT))
    rows: list[Row] = []
    async with nats(tmp) as server, running_service(tmp, server.url) as svc:
        client = svc.client
        progress(f"warm: waiting for the pool of {POOL_PROFILE} to hold {CONCURRENT} ready")
        await wait_pool_full(client, POOL_PROFILE, CONCURRENT, within=180)
        progress(f"warm: {SEQUENTIAL} sequential creates from the pool, refilled between them")
        await client.js.add_stream(name=RTT_STREAM, subjects=["bench.rtt"])
        spawn_ms, create_ms, idle_rtt_ms, chain_ms, claimed = [], [], [], [], 0
        shortest_ms: list[float] = []
        # The CPU of the service (or the chain's), nats-server and this client in each window.
        ours = WindowCpu((svc.process.pid, server.pid, os.getpid()))
        async with chain_service(server.url, client.nc, tmp / "chain.log") as chain_pid:
            theirs = WindowCpu((chain_pid, server.pid, os.getpid()))
            for turn in range(SEQUENTIAL):
                await wait_pool_full(client, POOL_PROFILE, CONCURRENT, within=60)
                # The two skeletons take turns at going first: the first comes right after the
                # pool's refill, and paid for it (the shortest chain, always first until
                # 2026-12-08, read 1.2 to 1.25 times the full chain it is the floor of).
                for shortest in (True, False) if turn % 2 else (False, True):
                    await asyncio.sleep(0.05)  # idle as long as the pool's own poll leaves it
                    if shortest:
                        shortest_ms.append(await chain_once(client.nc, client.js, shortest=True))
                        continue
                    with theirs.window():
                        chain_ms.append(await chain_once(client.nc, client.js))
                await asyncio.sleep(0.05)  # and the create meets the same idle as the chain did
                idle_rtt_ms.append(await publish_rtt(client.js))
                spawn_ms.append(await bwrap_once())
                with ours.window():
                    started = time.perf_counter()
                    ready = await client.create(POOL_PROFILE)
                    create_ms.append((time.perf_counter() - started) * 1000)
                claimed += bool(ready.get("pool_member"))  # the ready event names its member
                await client.destroy(ready["sandbox_id"])
        rows += percentile_rows(
            f"create→ready warm ({claimed}/{SEQUENTIAL} from the pool)",
            "ms",
            create_ms,
            spawn_ms,
            "raw bwrap `true`",
            Target("<=", 5.0),
        )
        rows.append(
            Row(
                "create→ready warm p50 vs the same chain of JetStream steps, no work",
                "ms",
                percentile(create_ms, 50),
                percentile(chain_ms, 50),
                "the chain alone p50",
            )
        )
        rows.append(
            Row(
                "the shortest chain DESIGN.md allows (6 publishes, 3 round trips), no work, p50",
                "ms",
                percentile(shortest_ms, 50),
                percentile(chain_ms, 50),
                "the chain alone (7 publishes, 3 round trips) p50",
            )
        )
        rows += window_cpu_rows(ours, theirs, create_ms, chain_ms)
        back_to_back_ms = [await publish_rtt(client.js) for _ in range(BACK_TO_BACK)]
        rows.append(
            Row(
                "JetStream publish→ack after 50 ms idle p50",
                "ms",
                percentile(idle_rtt_ms, 50),
                percentile(back_to_back_ms, 50),
                "the same publish back to back p50",
            )
        )
        if docker_ms:
            rows.append(
                Row(
                    f"create→ready warm ({claimed}/{SEQUENTIAL} from the pool) p50",
                    "ms",
                    percentile(create_ms, 50),
                    percentile(docker_ms, 50),
                    "docker run busybox p50",
                )
            )
        burst_s: list[float] = []
        used: list[CpuUse] = []
        spawn_s, chains_s, shortest_s, claimed = [], [], [], 0
        async with chain_service(server.url, client.nc, tmp / "chain.log"):
            for burst in range(BURSTS):
                await wait_pool_full(client, POOL_PROFILE, CONCURRENT, within=120)
                await asyncio.sleep(0.3)  # the last refill's and teardowns' tails settle first
                progress(
                    f"warm: burst {burst + 1} of {BURSTS}: {CONCURRENT} concurrent raw spawns; "
                    f"{CONCURRENT} chains, then {CONCURRENT} shortest chains, at once; "
                    f"{CONCURRENT} concurrent creates from a full pool"
                )
                spawn_s.append(await bwrap_concurrent(CONCURRENT))
                await asyncio.sleep(0.3)
                chains_s.append(await chains_at_once(client.nc, client.js, CONCURRENT))
                await asyncio.sleep(0.3)
                shortest_s.append(
                    await chains_at_once(client.nc, client.js, CONCURRENT, shortest=True)
                )
                await asyncio.sleep(0.3)
                pooled = functools.partial(client.create, POOL_PROFILE)
                readies = await timed_burst(svc, pooled, burst_s, used)
                claimed += sum(bool(ready.get("pool_member")) for ready in readies)
                await asyncio.gather(*(client.destroy(r["sandbox_id"]) for r in readies))
        served = f"{claimed}/{CONCURRENT * BURSTS} from it"
        rows += [
            Row(
                f"{CONCURRENT} concurrent creates→all ready, pool, p50 of {BURSTS} bursts ({served})",
                "s",
                percentile(burst_s, 50),
                percentile(spawn_s, 50),
                f"{CONCURRENT} concurrent raw bwrap, p50",
                Target("<=", 0.3),
            ),
            Row(
                f"{CONCURRENT} concurrent creates→all ready, pool, slowest of {BURSTS} bursts",
                "s",
                max(burst_s),
                max(spawn_s),
                f"{CONCURRENT} concurrent raw bwrap, slowest",
            ),
            Row(
                f"{CONCURRENT} concurrent creates→all ready, pool, p50 vs the same chains at "
                "once, no work",
                "s",
                percentile(burst_s, 50),
                percentile(chains_s, 50),
                f"{CONCURRENT} chains alone at once, p50",
            ),
            Row(
                f"{CONCURRENT} shortest chains DESIGN.md allows, at once, no work, p50",
                "s",
                percentile(shortest_s, 50),
                percentile(chains_s, 50),
                f"{CONCURRENT} chains (7 publishes) at once, p50",
            ),
            *burst_cpu_rows("pool", used, burst_s),
        ]
    return rows


def window_cpu_rows(
    ours: WindowCpu, theirs: WindowCpu, create_ms: list[float], chain_ms: list[float]
) -> list[Row]:
    """What the warm creates' windows cost each process in CPU, beside the chains': a window
    whose CPU, spread over the cores, comes near its length is bound by CPU, and its time
    moves with what any of the three processes spends in it, on the path or not."""
    cores = os.cpu_count() or 1
    within = "in its window, mean"
    return [
        Row(
            f"create→ready warm: every process's CPU {within}, over the {cores} cores",
            "ms",
            ours.mean_ms() / cores,
            statistics.mean(create_ms),
            "the warm create, mean",
        ),
        Row(
            f"the chain alone: every process's CPU {within}, over the {cores} cores",
            "ms",
            theirs.mean_ms() / cores,
            statistics.mean(chain_ms),
            "the chain alone, mean",
        ),
        *(
            Row(
                f"create→ready warm: {name} CPU {within}",
                "ms",
                ours.mean_ms(index),
                theirs.mean_ms(index),
                baseline,
            )
            for index, (name, baseline) in enumerate(
                [
                    ("the service's", "the chain's service process"),
                    ("nats-server's", "nats-server's in the chain's"),
                    ("the client's", "the chain's client"),
                ]
            )
        ),
    ]


async def publish_rtt(js: JetStreamContext) -> float:
    """One publish to the scratch stream until its ack, in ms: a warm create's unit of work."""
    started = time.perf_counter()
    await js.publish("bench.rtt", b"x" * 400)
    return (time.perf_counter() - started) * 1000


async def rows() -> list[Row]:
    require_tool("bwrap", "bubblewrap")
    with tempdir() as cold_tmp, tempdir() as warm_tmp:
        cold_rows, docker_ms = await cold(Path(cold_tmp))
        try:
            warm_rows = await warm(Path(warm_tmp), docker_ms)
        except (RuntimeError, TimeoutError) as exc:
            warm_rows = [
                failed(
                    "create→ready warm (pool)",
                    "ms",
                    f"{type(exc).__name__}: {exc}",
                    Target("<=", 5.0),
                )
            ]
    return cold_rows + warm_rows


if __name__ == "__main__":
    main(
        rows,
        [
            Row("create→ready cold p50", "ms", target=Target("<=", 3, "ratio")),
            Row(f"{CONCURRENT} concurrent creates→all ready, cold", "s", target=Target("<=", 1.0)),
            Row("create→ready warm p50", "ms", target=Target("<=", 5.0)),
            Row(
                f"{CONCURRENT} concurrent creates→all ready, pool, p50 of {BURSTS} bursts",
                "s",
                target=Target("<=", 0.3),
            ),
        ],
    )
