"""Shared set-up for benchmarks: a private nats-server and the service's roles in-process."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from sandboxer.bus.connect import connect
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.client import SandboxerClient
from sandboxer.config.catalog import Catalog
from sandboxer.config.settings import Settings
from sandboxer.service import all_roles, run_roles


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
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    settings = Settings(home=home, nats_urls=(url,), nats_server=None, ack_wait=30)
    catalog = Catalog.load(home)
    nc = await connect([url], name="bench-service")
    stop = asyncio.Event()
    task = asyncio.create_task(run_roles(nc, all_roles(catalog), settings, catalog, stop,
                                         info={}))
    client = await SandboxerClient.connect([url], actor={"type": "atm", "id": "bench"})
    for _ in range(200):
        with contextlib.suppress(Exception):
            await client.health()
            break
        await asyncio.sleep(0.05)
    try:
        yield client
    finally:
        await client.close()
        stop.set()
        await task
        await nc.drain()
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
    return (f"p50 {percentile(values_ms, 50):7.2f} ms  p95 {percentile(values_ms, 95):7.2f} ms  "
            f"mean {statistics.fmean(values_ms):7.2f} ms  (n={len(values_ms)})")
