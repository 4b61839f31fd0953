"""Warm pools as the CLI reports them: ``sandboxer pools --json``.

Each entry has at least ``profile``, ``extension``, ``ready`` and
``provisioning``. The benchmarks wait for a pool to be full before timing and
let it refill between sequential creates. A checkout without the command
(pools not built yet) makes the warm rows ``n/a``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["pool_profile", "pools_built", "wait_pool_full"]

CLI = [sys.executable, "-m", "sandboxer.cli.app"]


def pools_built() -> bool:
    """Whether this checkout's CLI has ``sandboxer pools``."""
    found = subprocess.run([*CLI, "pools", "--help"], capture_output=True, check=False)
    return found.returncode == 0


def pool_profile(profile_id: str, size: int) -> str:
    return (
        f"id: {profile_id}\n"
        "extension: ext.local\n"
        "isolation: {level: namespace}\n"
        "network: {default: deny}\n"
        f"pool: {{min_ready: {size}, max: {size}}}\n"
    )


async def pools(home: Path, url: str) -> list[dict[str, Any]]:
    env = dict(os.environ, SANDBOXER_HOME=str(home), SANDBOXER_NATS_URL=url)
    process = await asyncio.create_subprocess_exec(
        *CLI,
        "pools",
        "--json",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"sandboxer pools --json failed: {err.decode(errors='replace')}")
    found: list[dict[str, Any]] = json.loads(out)
    return found


async def wait_pool_full(home: Path, url: str, profile_id: str, size: int, within: float) -> None:
    """Until the pool of ``profile_id`` has ``size`` sandboxes ready (RuntimeError past ``within`` s)."""
    deadline = time.monotonic() + within
    last: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        last = [p for p in await pools(home, url) if p.get("profile") == profile_id]
        if last and int(last[0].get("ready", 0)) >= size:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(
        f"the pool of {profile_id} did not reach {size} ready in {within:g} s: {last}"
    )
