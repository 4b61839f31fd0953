"""TTL and idle reaping enforced by the service, against a real nats-server and bubblewrap:
short TTLs expire and destroy, extensions stop at ttl.max, idle reaping spares what is used,
an expiry due while the control worker is killed with -9 happens after restart exactly once,
and the view rebuilt from the log equals the live one."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sandboxer.client import SandboxerClient
from sandboxer.config.settings import Settings
from sandboxer.errors import CommandFailed
from tests.integration import conftest
from tests.integration.conftest import Cli, Service, reap_local, start_service
from tests.integration.test_lifecycle import wait_status

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SWEEP = 0.3
"""Expiry interval of the test services: expiries land within a fraction of a second."""

TIMED_PROFILE = """\
id: profile.timed
extension: ext.local
ttl: {default: 1m, max: 2m, idle_reap: 2s}
"""


@pytest.fixture(autouse=True)
def _quick_sweeps(monkeypatch: pytest.MonkeyPatch) -> None:
    """start_service's settings with a short expiry interval (what SANDBOXER_EXPIRY_INTERVAL
    sets for a real service)."""
    original = conftest.settings_for

    def quick(*args: Any, **kwargs: Any) -> Settings:
        return dataclasses.replace(original(*args, **kwargs), expiry_interval=SWEEP)

    monkeypatch.setattr(conftest, "settings_for", quick)


@pytest.fixture
async def timed(nats_server: Any, home: Path) -> Any:
    (home / "profiles").mkdir()
    (home / "profiles" / "profile.timed.yaml").write_text(TIMED_PROFILE)
    svc = await start_service(home, nats_server.url)
    try:
        yield svc
    finally:
        await svc.client.close()
        await svc.shutdown()
        await reap_local(home)


async def event_types(client: SandboxerClient, sandbox_id: str) -> list[str]:
    return [event["type"] async for _seq, event in client.events(sandbox_id=sandbox_id)]


async def test_short_ttl_expires_and_destroys(service: Service) -> None:
    client = service.client
    ready = await client.create(ttl="1s")
    sandbox_id = ready["sandbox_id"]
    shown = await client.get(sandbox_id)
    assert shown is not None
    assert shown["due"] == {"at": shown["expires_at"], "cause": "ttl"}
    started = time.monotonic()
    gone = await wait_status(client, sandbox_id, {"destroyed"}, timeout=15)
    assert time.monotonic() - started < 1 + SWEEP + 5
    assert gone["expiry"] == "ttl"
    types = await event_types(client, sandbox_id)
    assert types[-3:] == ["expired", "destroying", "destroyed"]
    assert not (service.settings.local_root / sandbox_id).exists()


async def test_create_and_extend_stop_at_ttl_max(timed: Service) -> None:
    client = timed.client
    with pytest.raises(CommandFailed) as too_long:
        await client.create("profile.timed", ttl="5m")
    assert "ttl.max (2m)" in str(too_long.value)
    ready = await client.create("profile.timed", ttl="1m")
    sandbox_id = ready["sandbox_id"]
    before = await client.get(sandbox_id)
    assert before is not None
    extended = await client.extend_ttl(sandbox_id, "30s")
    assert extended["expires_at"] > before["expires_at"]
    with pytest.raises(CommandFailed) as refused:
        await client.extend_ttl(sandbox_id, "1m")
    assert refused.value.event["code"] == "ttl_max_exceeded"
    assert "ttl.max is 2m" in str(refused.value)
    after = await client.get(sandbox_id)
    assert after is not None
    assert after["expires_at"] == extended["expires_at"]
    await client.destroy(sandbox_id)


async def test_idle_reaping_spares_an_active_sandbox(timed: Service) -> None:
    client = timed.client
    busy = (await client.create("profile.timed"))["sandbox_id"]
    idle = (await client.create("profile.timed"))["sandbox_id"]
    outputs: list[bytes] = []
    assert await client.exec(busy, ["true"], lambda _s, d: outputs.append(d)) == 0
    await wait_status(client, busy, {"active"})  # the exec was the first activity
    # 2 s idle limit (plus one 0.2 s touch interval): keep one busy for twice that.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        await client.touch(busy)
        await asyncio.sleep(0.4)
    reaped = await wait_status(client, idle, {"destroyed"}, timeout=10)
    assert reaped["expiry"] == "idle"
    spared = await client.get(busy)
    assert spared is not None
    assert spared["status"] == "active"
    assert "touched" in await event_types(client, busy)
    # Left alone, it goes the same way.
    assert (await wait_status(client, busy, {"destroyed"}, timeout=10))["expiry"] == "idle"


async def test_a_sandbox_running_a_long_exec_is_not_reaped_as_idle(timed: Service) -> None:
    """An exec that runs longer than the idle limit is the sandbox in use: the worker
    running it keeps recording activity while it runs, not only when it starts. (Until
    2026-12-04 only the start counted: a build longer than ttl.idle_reap was killed by the
    idle expiry under it.)"""
    client = timed.client
    sandbox_id = (await client.create("profile.timed"))["sandbox_id"]
    outputs: list[bytes] = []
    # Twice the 2 s idle limit (plus its 0.2 s touch interval), and no other activity.
    code = await client.exec(sandbox_id, ["sleep", "5"], lambda _s, d: outputs.append(d))
    assert code == 0
    spared = await client.get(sandbox_id)
    assert spared is not None
    assert spared["status"] == "active"
    assert "touched" in await event_types(client, sandbox_id)
    # Once the exec is over, idleness counts again.
    assert (await wait_status(client, sandbox_id, {"destroyed"}, timeout=10))["expiry"] == "idle"


def trickle(fifo: Path, data: bytes, seconds: float) -> None:
    """Write ``data`` into the named pipe ``fifo`` over ``seconds``, once a reader opens it
    (given up after a minute: a copy that failed before reading leaves none)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:  # ENXIO: nobody reads it yet
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
    os.set_blocking(fd, True)
    with os.fdopen(fd, "wb") as out:
        pieces = 10
        step = -(-len(data) // pieces)
        for start in range(0, len(data), step):
            time.sleep(seconds / pieces)
            out.write(data[start : start + step])
            out.flush()


async def test_a_sandbox_taking_a_long_copy_is_not_reaped_as_idle(
    timed: Service, tmp_path: Path
) -> None:
    """A copy that takes longer than the idle limit (a large file, a slow uplink: here its
    archive arrives over 5 s, through a named pipe) is the sandbox in use for as long as
    it runs, as an exec is. (Until 2026-12-04 only its start counted: the idle expiry
    tore the sandbox down under it, and the copy failed.)"""
    client = timed.client
    sandbox_id = (await client.create("profile.timed"))["sandbox_id"]
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w") as tar:
        body = b"arrived slowly\n" * 1000
        entry = tarfile.TarInfo("slow.txt")
        entry.size = len(body)
        tar.addfile(entry, io.BytesIO(body))
    fifo = tmp_path / "upload.tar"
    os.mkfifo(fifo)
    # Twice the 2 s idle limit (plus its 0.2 s touch interval), and no other activity.
    archive = packed.getvalue()
    writing = asyncio.ensure_future(asyncio.to_thread(trickle, fifo, archive, 5.0))
    copied = await client.put_archive(sandbox_id, fifo, "slow.txt", "file")
    await writing
    assert (copied.path, copied.size) == ("slow.txt", len(archive))
    spared = await client.get(sandbox_id)
    assert spared is not None
    assert spared["status"] == "active"
    assert "touched" in await event_types(client, sandbox_id)
    # Once the copy is over, idleness counts again.
    assert (await wait_status(client, sandbox_id, {"destroyed"}, timeout=10))["expiry"] == "idle"


async def test_a_long_exec_paused_with_its_sandbox_records_no_refused_touches(
    timed: Service,
) -> None:
    """A command running when its sandbox is paused freezes with it; the worker keeps it
    in use without touching a sandbox that cannot take one (each refused not_ready would be
    a rejection recorded every touch interval for as long as the pause lasts)."""
    client = timed.client
    sandbox_id = (await client.create("profile.timed"))["sandbox_id"]
    outputs: list[bytes] = []
    running = asyncio.ensure_future(
        client.exec(sandbox_id, ["sleep", "2"], lambda _s, d: outputs.append(d))
    )
    await wait_status(client, sandbox_id, {"active"})
    await client.pause(sandbox_id)
    await asyncio.sleep(1.5)  # seven touch intervals
    await client.resume(sandbox_id)
    assert await running == 0
    refused = [
        event
        async for _seq, event in client.events()
        if event.get("type") == "rejected" and event.get("sandbox_id") == sandbox_id
    ]
    assert refused == []
    await client.destroy(sandbox_id)


async def test_replay_equals_live_after_a_workload_with_expiries(timed: Service) -> None:
    client = timed.client
    kept = (await client.create(ttl="1m"))["sandbox_id"]  # profile.local: no idle limit
    short = [(await client.create(ttl=f"{n + 1}s"))["sandbox_id"] for n in range(3)]
    await client.extend_ttl(kept, "10s")
    await client.touch(kept)
    forced = (await client.create("profile.timed"))["sandbox_id"]
    adm = await SandboxerClient.connect(
        list(timed.settings.nats_urls), actor={"type": "adm", "id": "pytest-admin"}
    )
    try:
        await adm.expire(forced, reason="cleanup before the weekend")
    finally:
        await adm.close()
    for sandbox_id in [*short, forced]:
        await wait_status(client, sandbox_id, {"destroyed"}, timeout=15)
    report = await client.replay(verify=True)
    assert report["verified"], report["differences"]
    kept_state = await client.get(kept)
    assert kept_state is not None
    assert kept_state["status"] == "active"


SLOW_PROFILE = """\
id: profile.slow
extension: ext.local
setup:
  instructions: ["sleep 3"]
"""


async def test_a_create_whose_sandbox_expires_while_provisioning_fails_saying_so(
    nats_server: Any, home: Path
) -> None:
    (home / "profiles").mkdir()
    (home / "profiles" / "profile.slow.yaml").write_text(SLOW_PROFILE)
    svc = await start_service(home, nats_server.url)
    try:
        with pytest.raises(CommandFailed) as expired:
            await svc.client.create("profile.slow", ttl="1s", timeout=30)
        assert "expired (ttl) before the create finished" in str(expired.value)
        sandbox_id = expired.value.event["sandbox_id"]
        await wait_status(svc.client, sandbox_id, {"destroyed"}, timeout=15)
        # The worker saw the sandbox go while it provisioned and left nothing behind.
        async with asyncio.timeout(10):
            while (svc.settings.local_root / sandbox_id).exists():
                await asyncio.sleep(0.1)
    finally:
        await svc.client.close()
        await svc.shutdown()
        await reap_local(home)


async def test_an_agent_cannot_expire_a_sandbox_early(service: Service) -> None:
    sandbox_id = (await service.client.create())["sandbox_id"]
    with pytest.raises(CommandFailed) as refused:
        await service.client.expire(sandbox_id)
    assert refused.value.event["code"] == "not_due"
    await service.client.destroy(sandbox_id)


def start_control(home: Path, url: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, SANDBOXER_HOME=str(home), SANDBOXER_NATS_URL=url)
    env["SANDBOXER_EXPIRY_INTERVAL"] = str(SWEEP)
    with (home / "control.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "sandboxer.cli.app", "worker", "control"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


async def test_an_expiry_due_during_a_kill_9_happens_after_restart_exactly_once(
    nats_server: Any, home: Path
) -> None:
    svc = await start_service(home, nats_server.url, roles=["projector", "ext.local"])
    controls = [start_control(home, nats_server.url)]
    try:
        client = svc.client
        ready = await client.create(ttl="3s", timeout=30)
        sandbox_id = ready["sandbox_id"]
        os.kill(controls[0].pid, signal.SIGKILL)
        controls[0].wait()
        shown = await client.get(sandbox_id)
        assert shown is not None
        # Well past the deadline, with no control worker: nothing can have expired it.
        while (await client.get(sandbox_id) or {}).get("due", {}).get("at", "") > _now():
            await asyncio.sleep(0.2)
        await asyncio.sleep(1)
        assert (await client.get(sandbox_id) or {})["status"] == "ready"
        # Two control workers come back: both sweep the same overdue sandbox.
        controls = [start_control(home, nats_server.url) for _ in range(2)]
        gone = await wait_status(client, sandbox_id, {"destroyed"}, timeout=30)
        assert gone["expiry"] == "ttl"
        await asyncio.sleep(3 * SWEEP)  # further sweeps find nothing to do
        counts = Counter(await event_types(client, sandbox_id))
        assert counts["expired"] == 1
        assert counts["destroying"] == 1
        assert counts["destroyed"] == 1
        rejected = [
            event
            async for _seq, event in client.events()
            if event["type"] == "rejected" and event.get("sandbox_id") == sandbox_id
        ]
        assert rejected == []
    finally:
        for control in controls:
            control.kill()
            control.wait()
        await svc.client.close()
        await svc.shutdown()
        await reap_local(home)


def _now() -> str:
    from sandboxer.clock import utc_now

    return utc_now()


async def test_the_cli_creates_extends_touches_lists_and_expires(
    service: Service, cli_env: dict[str, str]
) -> None:
    cli = Cli(cli_env)
    created = json.loads((await cli("create", "--ttl", "1h", "--json")).stdout)
    sandbox_id = created["sandbox_id"]
    assert created["due"] == {"at": created["expires_at"], "cause": "ttl"}
    human = (await cli("get", sandbox_id)).stdout
    assert f"expires_at   {created['expires_at']}" in human

    too_far = await cli("extend-ttl", sandbox_id, "--duration", "1d", check=False)
    assert too_far.returncode == 2
    assert "ttl.max is 1d" in too_far.stderr
    extended = json.loads((await cli("extend-ttl", sandbox_id, "-d", "2h", "--json")).stdout)
    assert extended["type"] == "ttl_extended"
    assert extended["expires_at"] > created["expires_at"]

    await cli("touch", sandbox_id)
    await wait_status(service.client, sandbox_id, {"active"})
    [listed] = json.loads((await cli("list", "--json")).stdout)
    assert listed["due"]["at"] == extended["expires_at"]
    assert extended["expires_at"] in (await cli("list")).stdout

    assert json.loads((await cli("expire", "--json")).stdout) == []  # nothing overdue
    unknown = await cli("expire", "nosuchsandbox1", "--apply", check=False)
    assert unknown.returncode == 1
    assert "no sandbox nosuchsandbox1" in unknown.stderr
    [applied] = json.loads(
        (await cli("expire", sandbox_id, "--apply", "--reason", "done early", "--json")).stdout
    )
    assert applied["event"]["type"] == "destroying"
    gone = await wait_status(service.client, sandbox_id, {"destroyed"})
    assert gone["expiry"] == "forced"
