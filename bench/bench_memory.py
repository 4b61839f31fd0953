"""Memory: the RSS of ``sandboxer up`` and of its nats-server, idle and with 1,000 live sandboxes;
and, on the way, the CPU both use while idle.

``sandboxer up`` runs in its own process against a private nats-server (so the
two are measured apart). Idle is after one create and destroy (every role has
run once, its imports loaded) and a few seconds' settling. Then LIVE local
sandboxes are created, BATCH at a time, and measured while all are ready; the
sandboxes' own processes (bubblewrap and its holder) are not the service's
and are not counted. Baseline, in the same run: a bare Python process that
imports nats-py and connects to the same server.

Idle CPU is each process's over IDLE_CPU_SECONDS after the idle RSS is read (/proc), in
ms of CPU a second, beside the bare process's over the same seconds: what a service that
does nothing costs a machine (its pull loops renewing their requests, the projector's
consumer, timers), and nats-server's for serving it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from _harness import cpu_use, main, nats, progress, rss_mb, running_service, tempdir
from _table import Row, Target

LIVE = 1000
BATCH = 100
SETTLE_SECONDS = 3
IDLE_CPU_SECONDS = 10

BARE = """\
import asyncio, sys
import nats

async def main():
    nc = await nats.connect(sys.argv[1])
    print("connected", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


@contextlib.asynccontextmanager
async def bare_python(url: str) -> AsyncIterator[int]:
    """A bare Python connected to ``url`` (imports nats-py, connects, sleeps): its pid."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", BARE, url, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            line = await process.stdout.readline()
        if line.strip() != b"connected":
            raise RuntimeError(f"the bare python process did not connect: {line!r}")
        yield process.pid
    finally:
        process.kill()
        await process.wait()


async def rows() -> list[Row]:
    with tempdir() as raw_tmp:
        tmp = Path(raw_tmp)
        async with nats(tmp) as server, running_service(tmp, server.url) as svc:
            client = svc.client
            async with bare_python(server.url) as bare_pid:
                first = await client.create()
                await client.destroy(first["sandbox_id"])
                await asyncio.sleep(SETTLE_SECONDS)
                bare = rss_mb(bare_pid)
                service_idle, nats_idle = rss_mb(svc.process.pid), rss_mb(server.pid)
                progress(f"memory: the CPU of {IDLE_CPU_SECONDS} s idle")
                with (
                    cpu_use(svc.process.pid) as service_cpu,
                    cpu_use(server.pid) as nats_cpu,
                    cpu_use(bare_pid) as bare_cpu,
                ):
                    await asyncio.sleep(IDLE_CPU_SECONDS)

            progress(f"memory: creating {LIVE} local sandboxes, {BATCH} at a time")
            live: list[str] = []
            began = time.monotonic()
            try:
                for _ in range(LIVE // BATCH):
                    readies = await asyncio.gather(*(client.create() for _ in range(BATCH)))
                    live += [ready["sandbox_id"] for ready in readies]
                created_s = time.monotonic() - began
                progress(f"memory: {LIVE} ready after {created_s:.1f} s")
                await asyncio.sleep(SETTLE_SECONDS)
                service_live, nats_live = rss_mb(svc.process.pid), rss_mb(server.pid)
            finally:
                progress(f"memory: destroying {len(live)} sandboxes")
                began = time.monotonic()
                for start in range(0, len(live), BATCH):
                    batch = live[start : start + BATCH]
                    await asyncio.gather(*(client.destroy(sid) for sid in batch))
                destroyed_s = time.monotonic() - began
                progress(f"memory: destroyed after {destroyed_s:.1f} s")

    bare_name = "bare python: import nats, connect"
    return [
        Row(
            "service RSS (sandboxer up), idle",
            "MB",
            service_idle,
            bare,
            bare_name,
            Target("<=", 80),
        ),
        Row(
            f"service RSS (sandboxer up), {LIVE} live sandboxes",
            "MB",
            service_live,
            bare,
            bare_name,
        ),
        Row(
            "service CPU (sandboxer up), idle",
            "ms/s",
            service_cpu[0].process * 1000 / IDLE_CPU_SECONDS,
            bare_cpu[0].process * 1000 / IDLE_CPU_SECONDS,
            bare_name,
        ),
        Row("nats-server CPU, idle", "ms/s", nats_cpu[0].process * 1000 / IDLE_CPU_SECONDS),
        Row("nats-server RSS, idle", "MB", nats_idle),
        Row(f"nats-server RSS, {LIVE} live sandboxes", "MB", nats_live),
        # Not memory, but measured on the way: how long the service takes to fill and empty.
        Row(f"{LIVE} creates, {BATCH} at a time → all ready", "s", created_s),
        Row(f"{LIVE} destroys, {BATCH} at a time → all destroyed", "s", destroyed_s),
    ]


if __name__ == "__main__":
    main(rows)
