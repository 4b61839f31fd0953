"""Shared set-up for benchmarks: a private nats-server and the service's roles in-process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.client import SandboxerClient


@contextlib.asynccontextmanager
async def nats(tmp: Path) -> AsyncIterator[NatsServerProcess]:
    server = NatsServerProcess(tmp / "nats")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def service(tmp: Path, url: str) -> AsyncIterator[SandboxerClient]:
    """``sandboxer up`` in its own process against ``url``, and a client in this one.

    Separate processes, as in real use: the service's event loop and the
    client's do not compete for one core.
    """
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    env = dict(os.environ, SANDBOXER_HOME=str(home), SANDBOXER_NATS_URL=url)
    with (tmp / "service.log").open("ab") as log:
        process = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is timed
            [sys.executable, "-m", "sandboxer.cli.app", "up"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    client = await SandboxerClient.connect([url], actor={"type": "atm", "id": "bench"})
    try:
        for _ in range(400):
            with contextlib.suppress(Exception):
                await client.health()
                break
            if process.poll() is not None:
                raise RuntimeError(f"the service exited; see {tmp / 'service.log'}")
            await asyncio.sleep(0.05)
        yield client
    finally:
        await client.close()
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 60)
        from sandboxer.extensions.local.backend import LocalExtension

        local = LocalExtension(home / "local")
        for found in await local.list_sandboxes():
            await local.teardown(found.sandbox_id)


def tempdir() -> contextlib.AbstractContextManager[str]:
    return tempfile.TemporaryDirectory(prefix="sandboxer-bench-")


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def summary(values_ms: list[float]) -> str:
    return (
        f"p50 {percentile(values_ms, 50):7.2f} ms  p95 {percentile(values_ms, 95):7.2f} ms  "
        f"mean {statistics.fmean(values_ms):7.2f} ms  (n={len(values_ms)})"
    )
