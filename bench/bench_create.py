"""create -> ready through the bus: 50 sequential creates and 100 concurrent ones.

Baseline measured in the same run: the raw spawn of a bubblewrap sandbox
running ``true`` with the same isolation flags, no bus and no bookkeeping.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from _harness import nats, service, summary, tempdir

SEQUENTIAL = 50
CONCURRENT = 100

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


async def raw_bwrap(n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        process = await asyncio.create_subprocess_exec(*BWRAP_TRUE)
        await process.wait()
        times.append((time.perf_counter() - started) * 1000)
    return times


async def main() -> None:
    with tempdir() as raw_tmp:
        tmp = Path(raw_tmp)
        async with nats(tmp) as server, service(tmp, server.url) as client:
            await client.create()  # warm-up: streams, consumers, imports
            baseline = await raw_bwrap(SEQUENTIAL)

            latencies = []
            for _ in range(SEQUENTIAL):
                started = time.perf_counter()
                ready = await client.create()
                latencies.append((time.perf_counter() - started) * 1000)
                await client.destroy(ready["sandbox_id"])

            started = time.perf_counter()
            readies = await asyncio.gather(*(client.create() for _ in range(CONCURRENT)))
            concurrent_seconds = time.perf_counter() - started
            await asyncio.gather(*(client.destroy(r["sandbox_id"]) for r in readies))

    print(f"raw bwrap spawn of `true`      : {summary(baseline)}")
    print(f"create -> ready via the bus    : {summary(latencies)}")
    print(f"{CONCURRENT} concurrent creates -> all ready: {concurrent_seconds:.3f} s")


if __name__ == "__main__":
    asyncio.run(main())
