"""The real ``sandboxer`` CLI in subprocesses: shared NATS, and the embedded default."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import Cli, Service, reap_local

pytestmark = pytest.mark.integration


async def test_cli_lifecycle(service: Service, cli_env: dict[str, str], tmp_path: Path) -> None:
    del service
    cli = Cli(cli_env)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README").write_text("hello repo\n")

    created = await cli("create", "--input", f"repo={repo}", "--json")
    sandbox = json.loads(created.stdout)
    sandbox_id = sandbox["sandbox_id"]
    assert sandbox["status"] == "ready"

    shown = json.loads((await cli("get", sandbox_id, "--json")).stdout)
    assert shown["sandbox_id"] == sandbox_id
    listed = json.loads((await cli("list", "--json")).stdout)
    assert [s["sandbox_id"] for s in listed] == [sandbox_id]

    ran = await cli(
        "exec",
        sandbox_id,
        "--",
        "sh",
        "-c",
        "cat /workspace/README; echo oops >&2; exit 5",
        check=False,
    )
    assert ran.returncode == 5
    assert ran.stdout == "hello repo\n"
    assert ran.stderr == "oops\n"

    events = [
        json.loads(line)
        for line in (await cli("events", "--sandbox", sandbox_id, "--json")).stdout.splitlines()
    ]
    kinds = [e["type"] for e in events]
    assert kinds[:4] == ["requested", "routed", "provisioning", "ready"]
    assert kinds[4:] in ([], ["active"])  # the exec's touch, once the control worker had it

    human = await cli("create")
    assert "ready" in human.stderr  # progress lines while waiting
    assert "reachability" in human.stdout

    destroyed = await cli("destroy", sandbox_id)
    assert f"destroyed {sandbox_id}" in destroyed.stdout
    assert json.loads((await cli("get", sandbox_id, "--json")).stdout)["status"] == "destroyed"


async def test_cli_errors_name_the_problem(service: Service, cli_env: dict[str, str]) -> None:
    del service
    cli = Cli(cli_env)
    unknown = await cli("create", "--profile", "profile.nope", check=False)
    assert unknown.returncode == 2
    assert "unknown profile 'profile.nope'" in unknown.stderr
    bad_id = await cli("get", "../etc", check=False)
    assert bad_id.returncode == 1
    assert "invalid sandbox id" in bad_id.stderr
    gone = await cli("destroy", "neverexisted", check=False)
    assert gone.returncode == 2
    assert "no sandbox neverexisted" in gone.stderr
    missing = await cli("get", "neverexisted", check=False)
    assert missing.returncode == 1


async def test_catalog_commands(cli_env: dict[str, str]) -> None:
    cli = Cli(cli_env)
    profiles = json.loads((await cli("profiles", "list", "--json")).stdout)
    assert "profile.local" in [p["id"] for p in profiles]
    assert "ext.local" in (await cli("profiles", "show", "profile.local")).stdout
    extensions = json.loads((await cli("extensions", "list", "--json")).stdout)
    assert sorted(e["id"] for e in extensions) == [
        "ext.compose-ssh",
        "ext.daytona",
        "ext.e2b",
        "ext.local",
        "ext.modal",
        "ext.saas-stub",
        "ext.vm-packer",
    ]
    doctor = json.loads((await cli("doctor", "--json")).stdout)
    assert all(check["ok"] for check in doctor), doctor


@pytest.mark.slow
async def test_embedded_default_starts_in_the_background(home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SANDBOXER_NATS_URL"}
    env["SANDBOXER_HOME"] = str(home)
    cli = Cli(env)
    try:
        created = await cli("create", "--json")
        assert "started sandboxer in the background" in created.stderr
        assert str(home / "service.log") in created.stderr
        sandbox_id = json.loads(created.stdout)["sandbox_id"]
        record = json.loads((home / "service.json").read_text())
        assert record["nats_url"].startswith("nats://127.0.0.1:")
        second = await cli("create", "--json")
        assert "background" not in second.stderr  # found the running service
        assert (await cli("exec", sandbox_id, "--", "true")).returncode == 0
        await cli("destroy", sandbox_id)
        already = await cli("up", check=False)
        assert already.returncode == 1
        assert "already running" in already.stderr
    finally:
        stopped = subprocess.run(
            [sys.executable, "-m", "sandboxer.cli.app", "down"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        await reap_local(home)
    assert "stopped sandboxer" in stopped.stderr
    assert not (home / "service.json").exists()


async def test_events_follow_streams_new_events(service: Service, cli_env: dict[str, str]) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sandboxer.cli.app",
        "events",
        "--follow",
        "--json",
        env=cli_env,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        await asyncio.sleep(1.0)  # let it subscribe
        ready = await service.client.create()
        seen: list[str] = []
        async with asyncio.timeout(20):
            while "ready" not in seen:
                assert process.stdout is not None
                event = json.loads(await process.stdout.readline())
                assert event["sandbox_id"] == ready["sandbox_id"]
                seen.append(event["type"])
        assert seen == ["requested", "routed", "provisioning", "ready"]
    finally:
        process.terminate()
        await process.wait()


async def test_host_commands(service: Service, cli_env: dict[str, str]) -> None:
    cli = Cli(cli_env)
    await service.client.create()
    reports = json.loads((await cli("inspect", "host", "--json")).stdout)
    assert [r["extension"] for r in reports] == ["ext.local"]  # no SSH hosts configured
    assert reports[0]["report"]["sandboxes"] == 1
    stale = await cli("inspect", "stale")
    assert "no drift" in stale.stdout
    dry = await cli("reap-stale")
    assert "dry run" in dry.stderr
    hosts = json.loads((await cli("hosts", "--json")).stdout)
    assert hosts[0]["host"].startswith("local-")


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("SANDBOXER_ACK_WAIT", "soon", "positive number of seconds"),
        ("SANDBOXER_NATS_URL", "http://example.org", "nats://HOST:PORT"),
    ],
)
@pytest.mark.parametrize("command", [["list"], ["up"], ["doctor"]])
async def test_bad_setting_is_one_line_not_a_traceback(
    home: Path, variable: str, value: str, allowed: str, command: list[str]
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXER_")}
    env["SANDBOXER_HOME"] = str(home)
    env[variable] = value
    result = await Cli(env)(*command, check=False, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {variable}={value!r} is invalid")
    assert allowed in line


async def test_missing_setup_says_how_to_make_it(home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXER_")}
    env["SANDBOXER_HOME"] = str(home)
    no_service = await Cli(env)("list", check=False, timeout=60)
    assert no_service.returncode == 1
    assert "sandboxer up" in no_service.stderr
    assert "Traceback" not in no_service.stderr
    no_nats = await Cli(env)("worker", "control", check=False, timeout=60)
    assert no_nats.returncode == 1
    assert "SANDBOXER_NATS_URL=nats://" in no_nats.stderr


async def test_down_leaves_alone_a_process_that_took_a_dead_services_pid(home: Path) -> None:
    """A service killed with -9 leaves its record; once its pid is another process's,
    'down' must not stop that process (its start time is not the record's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXER_")}
    env["SANDBOXER_HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        record = {"pid": stranger.pid, "pid_start": 1, "nats_url": "nats://127.0.0.1:1"}
        (home / "service.json").write_text(json.dumps(record))
        result = await Cli(env)("down", check=False, timeout=60)
        assert "not running" in result.stderr, result
        assert stranger.poll() is None  # still running
    finally:
        stranger.kill()
        stranger.wait()


async def test_an_idle_service_stops_quickly(home: Path) -> None:
    """``sandboxer down`` of an idle service ends cleanly (exit 0, its service file gone) and
    without hanging: a guard against a loop that never notices the stop, not a timing (how
    long a stop takes is measured in docs/performance.md#stopping-the-service)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXER_")}
    env |= {"SANDBOXER_HOME": str(home), "SANDBOXER_HTTP_ADDR": "127.0.0.1:0"}
    home.mkdir(parents=True, exist_ok=True)
    with (home / "up.log").open("ab") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "sandboxer.cli.app", "up"], env=env, stdout=log, stderr=log
        )
    try:
        async with asyncio.timeout(60):
            while not (home / "service.json").exists():
                assert up.poll() is None, (home / "up.log").read_text()
                await asyncio.sleep(0.05)
        await asyncio.sleep(1)  # every loop waiting for work
        stopped = asyncio.get_running_loop().time()
        up.terminate()  # what `down` sends
        assert await asyncio.to_thread(up.wait, 30) == 0
        took = asyncio.get_running_loop().time() - stopped
        # 0.3 to 0.8 s idle; the bound only tells a stop from a loop that never sees it
        # (which runs into the 30 s wait), with room for a machine loaded by the suite.
        assert took < 10, f"an idle service took {took:.2f} s to stop"
        assert not (home / "service.json").exists()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
