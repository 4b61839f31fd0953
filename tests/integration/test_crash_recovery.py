"""kill -9 of the extension worker in the middle of provisioning: one sandbox, nothing leaked,
and the work resumes within seconds (the default ack wait), not after half a minute; and in
the middle of an exec: its clients stop waiting within seconds, saying why."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sandboxer.errors import WorkerLost
from sandboxer.extensions.local.backend import LocalExtension
from tests.integration.conftest import reap_local, start_service, start_worker
from tests.integration.test_lifecycle import wait_status

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HEARTBEAT = 1.0
"""The killed workers' SANDBOXER_EXEC_HEARTBEAT, the shortest it may be (10 s by default)."""
GAVE_UP_WITHIN = 15.0
"""Seconds from the kill within which the clients stop waiting: three missed heartbeats
(3 s) and a slow machine's margin; their timeouts (4 min here, an hour for the CLI) are
far outside it."""

SLOW_PROFILE = """\
id: profile.slow
extension: ext.local
setup:
  instructions: ["sleep 3", "echo set-up > /workspace/done"]
"""


def sandbox_processes(workspace: Path) -> list[int]:
    """Pids of the outermost bwrap processes whose command line mentions this workspace.

    bwrap forks once inside its new pid namespace, so one sandbox shows two
    bwrap processes: count only those whose parent is not one of them.
    """
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"bwrap") and str(workspace).encode() in cmdline:
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return [pid for pid, parent in parents.items() if parent not in parents]


async def test_kill_9_during_provisioning(nats_server: Any, home: Path) -> None:
    (home / "profiles").mkdir()
    (home / "profiles" / "profile.slow.yaml").write_text(SLOW_PROFILE)
    svc = await start_service(home, nats_server.url, roles=["control", "projector"])
    worker = start_worker(home, nats_server.url)
    replacement = None
    try:
        client = svc.client
        created = await client.create("profile.slow", wait=False)
        sandbox_id = created["sandbox_id"]
        await wait_status(client, sandbox_id, {"provisioning"})
        workspace = home / "local" / sandbox_id / "workspace"
        async with asyncio.timeout(10):
            while not sandbox_processes(workspace):
                await asyncio.sleep(0.05)
        os.kill(worker.pid, signal.SIGKILL)
        killed = time.monotonic()
        worker.wait()

        replacement = start_worker(home, nats_server.url)
        ready = await wait_status(client, sandbox_id, {"ready", "failed"}, timeout=60)
        resumed_in = time.monotonic() - killed
        assert ready["status"] == "ready", ready
        # The job comes back one ack wait (5 s) after the last heartbeat, then the 3 s setup
        # runs again; 30 s (the old ack wait) is far outside this bound.
        assert resumed_in < 15, f"ready {resumed_in:.1f} s after the kill"
        assert ready["attempt"] == 2
        found = await LocalExtension(home / "local").list_sandboxes()
        assert [(f.sandbox_id, f.alive) for f in found] == [(sandbox_id, True)]
        assert len(sandbox_processes(workspace)) == 1
        assert (workspace / "done").read_text() == "set-up\n"

        await client.destroy(sandbox_id)
        assert sandbox_processes(workspace) == []
        assert not (home / "local" / sandbox_id).exists()
    finally:
        for process in (worker, replacement):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(10)
        await svc.client.close()
        await svc.shutdown()
        await reap_local(home)


async def test_sigterm_during_provisioning_finishes_the_create_then_stops(
    nats_server: Any, home: Path
) -> None:
    """A stop (``sandboxer down``) fetches nothing more, but the create in hand runs to its
    end and is acknowledged: ready on its first attempt, no replacement."""
    (home / "profiles").mkdir()
    (home / "profiles" / "profile.slow.yaml").write_text(SLOW_PROFILE)
    svc = await start_service(home, nats_server.url, roles=["control", "projector"])
    worker = start_worker(home, nats_server.url)
    try:
        client = svc.client
        sandbox_id = (await client.create("profile.slow", wait=False))["sandbox_id"]
        await wait_status(client, sandbox_id, {"provisioning"})
        workspace = home / "local" / sandbox_id / "workspace"
        async with asyncio.timeout(10):
            while not sandbox_processes(workspace):
                await asyncio.sleep(0.05)
        worker.terminate()
        assert await asyncio.to_thread(worker.wait, 30) == 0
        ready = await wait_status(client, sandbox_id, {"ready", "failed"}, timeout=10)
        assert ready["status"] == "ready", ready
        assert ready["attempt"] == 1
        assert (workspace / "done").read_text() == "set-up\n"
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        await svc.client.close()
        await svc.shutdown()
        await reap_local(home)


async def test_kill_9_of_the_worker_mid_exec_ends_the_wait_with_the_reason(
    nats_server: Any, home: Path
) -> None:
    """A worker killed mid-exec sends no ``exit``: its clients (the Python client, and the
    CLI in its own process) stop waiting once its heartbeats stop, not at their timeout."""
    svc = await start_service(home, nats_server.url, roles=["control", "projector"])
    # A heartbeat each second instead of 10: the clients learn it from the worker's
    # ``started``, and give up after three silent spells (3 s instead of 30).
    worker = start_worker(home, nats_server.url, heartbeat=HEARTBEAT)
    cli: asyncio.subprocess.Process | None = None
    try:
        client = svc.client
        sandbox_id = (await client.create("profile.local", timeout=60))["sandbox_id"]
        said: list[bytes] = []
        running = asyncio.create_task(
            client.exec(
                sandbox_id,
                ["sh", "-c", "echo go; sleep 300"],
                lambda _s, data: said.append(data),
                timeout=240,
            )
        )
        env = dict(os.environ, SANDBOXER_HOME=str(home), SANDBOXER_NATS_URL=nats_server.url)
        cli = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "sandboxer.cli.app", "exec", sandbox_id],
            *["--", "sh", "-c", "echo go; sleep 300"],
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert cli.stdout is not None
        async with asyncio.timeout(30):
            assert await cli.stdout.readline() == b"go\n"
            while b"go\n" not in b"".join(said):
                await asyncio.sleep(0.05)
        os.kill(worker.pid, signal.SIGKILL)
        killed = time.monotonic()
        worker.wait()

        # Three missed heartbeats (about 3 s); the old clients waited out their timeout
        # (an hour for the CLI).
        with pytest.raises(WorkerLost, match="stopped answering") as lost:
            await asyncio.wait_for(running, 60)
        assert "may still be running" in lost.value.message
        assert "nothing from it for 3 s" in lost.value.message
        assert time.monotonic() - killed < GAVE_UP_WITHIN
        _out, err = await asyncio.wait_for(cli.communicate(), 30)
        assert cli.returncode == 1
        assert b"stopped answering" in err, err
    finally:
        if cli is not None and cli.returncode is None:
            cli.kill()
            await cli.wait()
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        await svc.client.close()
        await svc.shutdown()
        await reap_local(home)


async def test_kill_9_of_the_worker_mid_copy_ends_the_wait_with_the_reason(
    nats_server: Any, home: Path, tmp_path: Path
) -> None:
    """A worker killed mid-copy sends no ``done``: its clients (the Python client, and
    ``sandboxer cp`` in its own process) stop waiting once its heartbeats stop, not after
    an hour."""
    svc = await start_service(home, nats_server.url, roles=["control", "projector"])
    worker = start_worker(home, nats_server.url, heartbeat=HEARTBEAT)
    cli: asyncio.subprocess.Process | None = None
    try:
        client = svc.client
        sandbox_id = (await client.create("profile.local", timeout=60))["sandbox_id"]
        # Big enough that its copies out (read, checked, stored) take seconds.
        code = await client.exec(
            sandbox_id, ["truncate", "-s", "400M", "big"], lambda _s, _d: None, timeout=30
        )
        assert code == 0
        copying = asyncio.create_task(
            client.copy_out(sandbox_id, "big", tmp_path / "big", max_mb=1024)
        )
        env = dict(os.environ, SANDBOXER_HOME=str(home), SANDBOXER_NATS_URL=nats_server.url)
        cli = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "sandboxer.cli.app", "cp", f"{sandbox_id}:big", "cli.big"],
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        staging = home / "staging" / "files"
        async with asyncio.timeout(30):  # both copies are under way in the worker
            while len(list(staging.glob("*"))) < 2:
                await asyncio.sleep(0.01)
        os.kill(worker.pid, signal.SIGKILL)
        killed = time.monotonic()
        worker.wait()

        with pytest.raises(WorkerLost, match="stopped answering") as lost:
            await asyncio.wait_for(copying, 60)
        assert "copying files" in lost.value.message
        assert time.monotonic() - killed < GAVE_UP_WITHIN
        _out, err = await asyncio.wait_for(cli.communicate(), 30)
        assert cli.returncode == 1
        assert b"stopped answering" in err, err
    finally:
        if cli is not None and cli.returncode is None:
            cli.kill()
            await cli.wait()
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        await svc.client.close()
        await svc.shutdown()
        await reap_local(home)
