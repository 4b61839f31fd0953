"""Warm creates, and the chain alone, at several spacings: is our work the idle's or our own?

    python bench/warm_gaps.py [ROUNDS]

A create after 50 ms idle (what ``make bench`` times) meets processes that slept, and
every step of Python runs slower after a sleep (docs/performance.md, "The warm path").
This times warm creates spaced 0, 2, 5, 10, 20 and 50 ms apart, in shuffled order, and
the chain of JetStream steps alone (``_chain.py``) at the same spacings: what our work
adds at each spacing is the create minus the chain. Each round times the chains first, with the
pool full and its keeper quiet, then the creates. The pool holds one member per create of
a round, so no member is made while the creates run (a keeper refills only once claims
have been quiet for 100 ms); the sandboxes are destroyed, and the pool refilled, between
rounds.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from pathlib import Path

from _chain import chain_once, chain_service
from _harness import nats, percentile, progress, running_service, tempdir
from _pools import pool_profile, wait_pool_full

PROFILE = "profile.bench-gaps"
GAPS_MS = (0, 2, 5, 10, 20, 50)
EACH = 12  # creates per spacing and round


async def measure(rounds: int) -> None:
    size = len(GAPS_MS) * EACH
    with tempdir() as name:
        tmp = Path(name)
        (tmp / "home" / "profiles").mkdir(parents=True)
        (tmp / "home" / "profiles" / f"{PROFILE}.yaml").write_text(pool_profile(PROFILE, size))
        creates: dict[int, list[float]] = {gap: [] for gap in GAPS_MS}
        chains: dict[int, list[float]] = {gap: [] for gap in GAPS_MS}
        async with nats(tmp) as server, running_service(tmp, server.url) as svc:
            client = svc.client
            async with chain_service(server.url, client.nc, tmp / "chain.log"):
                for round_ in range(rounds):
                    progress(f"round {round_ + 1} of {rounds}: the pool fills to {size}")
                    await wait_pool_full(client, PROFILE, size, within=300)
                    await asyncio.sleep(0.5)
                    order = [gap for gap in GAPS_MS for _ in range(EACH)]
                    random.shuffle(order)
                    for gap in order:  # first, while the pool is full and its keeper quiet
                        await asyncio.sleep(gap / 1000)
                        chains[gap].append(await chain_once(client.nc, client.js))
                    random.shuffle(order)
                    made = []
                    for gap in order:
                        await asyncio.sleep(gap / 1000)
                        started = time.perf_counter()
                        ready = await client.create(PROFILE)
                        creates[gap].append((time.perf_counter() - started) * 1000)
                        if not ready.get("pool_member"):
                            sys.exit("a create was not served by the pool: the figures are void")
                        made.append(ready["sandbox_id"])
                    await asyncio.gather(*(client.destroy(sandbox) for sandbox in made))
    print("spacing   warm create p50   the chain alone p50   create - chain   create / chain")
    for gap in GAPS_MS:
        create, chain = percentile(creates[gap], 50), percentile(chains[gap], 50)
        print(
            f"{gap:4d} ms   {create:12.2f} ms   {chain:16.2f} ms   {create - chain:11.2f} ms"
            f"   {create / chain:13.2f}x"
        )


if __name__ == "__main__":
    numbers = [arg for arg in sys.argv[1:] if arg.isdigit()]
    asyncio.run(measure(int(numbers[0]) if numbers else 4))
