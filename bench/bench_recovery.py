"""Recovery after kill -9 of ``sandboxer up``: how long until the in-flight creates are ready.

A burst of creates whose setup takes a couple of seconds is sent; while they
are provisioning, the service is killed with SIGKILL and started again at
once. The figure is the time from the kill to the last of them being ready,
with the ack wait this version uses by default, with the old default (30 s),
and with the embedded nats-server (which dies with the service and restarts
on a new port). Baseline, measured in the same run: one such create on an
idle service, so the difference is what the crash cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from _harness import main, nats, percentile, progress, tempdir
from _table import Row

from sandboxer.bus.nats_auth import read_credentials
from sandboxer.bus.permissions import CLIENT
from sandboxer.client import SandboxerClient
from sandboxer.errors import ServiceNotRunning
from sandboxer.extensions.local.backend import LocalExtension

BURST = 20
SETUP_SECONDS = 2
IDLE_RUNS = 3
PROFILE = f"""\
id: profile.bench-slow
extension: ext.local
setup:
  instructions: ["sleep {SETUP_SECONDS}"]
"""


def start_up(home: Path, url: str | None, ack_wait: str | None) -> subprocess.Popen[bytes]:
    """``sandboxer up`` against ``url``, or with its own embedded nats-server when None."""
    env = dict(os.environ, SANDBOXER_HOME=str(home))
    for name in ("SANDBOXER_ACK_WAIT", "SANDBOXER_NATS_URL"):
        env.pop(name, None)
    if url is not None:
        env["SANDBOXER_NATS_URL"] = url
    if ack_wait is not None:
        env["SANDBOXER_ACK_WAIT"] = ack_wait
    with (home / "service.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "sandboxer.cli.app", "up"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )


async def client_for(
    home: Path, url: str | None, process: subprocess.Popen[bytes]
) -> SandboxerClient:
    """A client of the service ``process`` runs, once it answers queries."""
    async with asyncio.timeout(60):
        while url is None:  # the embedded server's port is new after every start
            with contextlib.suppress(OSError, ValueError):
                record = json.loads((home / "service.json").read_text())
                if record["pid"] == process.pid:
                    url = str(record["nats_url"])
            if process.poll() is not None:
                raise RuntimeError(f"the service exited; see {home / 'service.log'}")
            await asyncio.sleep(0.05)
        # The embedded server refuses anonymous clients: use the credentials `up` generated.
        credentials = read_credentials(home / "nats-auth", CLIENT)
        client = await SandboxerClient.connect(
            [url], actor={"type": "atm", "id": "bench"}, credentials=credentials
        )
        while True:
            with contextlib.suppress(Exception):
                await client.health()
                return client
            if process.poll() is not None:
                raise RuntimeError(f"the service exited; see {home / 'service.log'}")
            await asyncio.sleep(0.05)


async def until_ready(client: SandboxerClient, sandbox_ids: list[str]) -> None:
    """Poll the view until every sandbox is ready."""
    waiting = set(sandbox_ids)
    async with asyncio.timeout(180):
        while waiting:
            for sandbox_id in list(waiting):
                with contextlib.suppress(ServiceNotRunning):  # the view is still starting
                    found = await client.get(sandbox_id)
                    if found is not None and found["status"] == "ready":
                        waiting.discard(sandbox_id)
                    elif found is not None and found["status"] == "failed":
                        raise RuntimeError(f"{sandbox_id} failed: {found}")
            await asyncio.sleep(0.05)


async def crash_round(
    home: Path, url: str | None, ack_wait: str | None
) -> tuple[list[float], float]:
    """Idle creates, then a burst killed mid-provisioning; returns (idle ms, recovery s)."""
    (home / "profiles").mkdir(parents=True)
    (home / "profiles" / "profile.bench-slow.yaml").write_text(PROFILE)
    process = start_up(home, url, ack_wait)
    client = await client_for(home, url, process)
    try:
        idle = []
        for _ in range(IDLE_RUNS):
            started = time.perf_counter()
            await client.create("profile.bench-slow")
            idle.append((time.perf_counter() - started) * 1000)

        sent = await asyncio.gather(
            *(client.create("profile.bench-slow", wait=False) for _ in range(BURST))
        )
        await asyncio.sleep(SETUP_SECONDS / 2)  # inside the setup of every one of them
        process.send_signal(signal.SIGKILL)
        killed = time.perf_counter()
        await asyncio.to_thread(process.wait)
        process = start_up(home, url, ack_wait)
        if url is None:  # the old client's server died with the service
            with contextlib.suppress(Exception):
                await client.close()
            client = await client_for(home, url, process)
        await until_ready(client, [s["sandbox_id"] for s in sent])
        return idle, time.perf_counter() - killed
    finally:
        with contextlib.suppress(Exception):
            await client.close()
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 60)
        local = LocalExtension(home / "local")
        for found in await local.list_sandboxes():
            await local.teardown(found.sandbox_id)


async def rows() -> list[Row]:
    with tempdir() as raw_tmp:
        tmp = Path(raw_tmp)
        async with nats(tmp) as server:
            progress(f"recovery: kill -9 during {BURST} creates, ack wait 5 s (the default)")
            idle, recovered = await crash_round(tmp / "default", server.url, None)
            progress("recovery: the same with the old default ack wait of 30 s")
            old_idle, old_recovered = await crash_round(tmp / "old", server.url, "30")
        progress("recovery: the same with the embedded nats-server (it dies with the service)")
        embedded_idle, embedded = await crash_round(tmp / "embedded", None, None)

    def idle_s(samples: list[float]) -> float:
        return percentile(samples, 50) / 1000

    name = f"one such create, idle service, p50 of {IDLE_RUNS}"
    return [
        Row(
            f"kill -9 during {BURST} creates ({SETUP_SECONDS} s setup) → all ready, ack wait 5 s",
            "s",
            recovered,
            idle_s(idle),
            name,
        ),
        Row(
            "  the same, ack wait 30 s (the old default)",
            "s",
            old_recovered,
            idle_s(old_idle),
            name,
        ),
        Row(
            "  the same, embedded nats-server (dies with the service)",
            "s",
            embedded,
            idle_s(embedded_idle),
            name,
        ),
    ]


if __name__ == "__main__":
    main(rows)
