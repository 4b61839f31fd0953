"""Warm pools as their keepers report them (what ``sandboxer pools --json`` prints).

Each entry has at least ``profile``, ``extension``, ``ready`` and
``provisioning``. The benchmarks wait for a pool to be full before timing and
let it refill between sequential creates. The client's ``pools()`` is asked
in-process rather than through the CLI: a CLI process per poll would cost
half a second of a core while the pool refills.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sandboxer.client import SandboxerClient

__all__ = ["pool_profile", "wait_pool_full"]


def pool_profile(profile_id: str, size: int) -> str:
    return (
        f"id: {profile_id}\n"
        "extension: ext.local\n"
        "isolation: {level: namespace}\n"
        "network: {default: deny}\n"
        f"pool: {{min_ready: {size}, max: {size}}}\n"
    )


async def wait_pool_full(
    client: SandboxerClient, profile_id: str, size: int, within: float
) -> None:
    """Until the pool of ``profile_id`` has ``size`` members ready (RuntimeError past ``within`` s)."""
    deadline = time.monotonic() + within
    last: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        last = [p for p in await client.pools() if p.get("profile") == profile_id]
        if last and sum(int(p.get("ready", 0)) for p in last) >= size:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(
        f"the pool of {profile_id} did not reach {size} ready in {within:g} s: {last}"
    )
