"""create -> ready for ext.compose-ssh and ext.vm-packer against a loopback SSH host.

Baseline, measured in the same run and alternating with the creates: the
same steps done by hand over one SSH connection (connect, make the
directory and rsync the repo, write the env file, ``docker-compose up -d``,
list the containers; for the VM: connect, make the workspace and rsync), so
the difference is sandboxer's overhead (bus, placement probe, events, checks).

For compose the hand also does the two things a create must do that the
steps above leave out (docs/performance.md, "SSH backends"): the profile's
network policy is deny, which sandboxer enforces whatever the compose file
says, so the hand asks compose for the services and starts them with an
override giving each ``network_mode: none``; and "ready" means every
container seen running twice, ``STABLE_AFTER`` apart (a container that
crashes at once must not pass), so the hand lists them twice that far apart
in one command. Without these the baseline measured a different job.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _docker import start_docker_engine
from _harness import main, nats, percentile_rows, progress, require_tool, service
from _table import Row, Target

from sandboxer.extensions.compose_ssh.readiness import STABLE_AFTER
from sandboxer.ssh import remote, session, sync
from tests.integration.remote_fixtures import SshHosts, write_hosts_file

RUNS = 10
COMPOSE = """\
services:
  web:
    image: localhost/mini:latest
    command: ["sleep", "3600"]
    network_mode: none
    init: true
"""
PROFILES = {
    "profile.bench-compose": "id: profile.bench-compose\nextension: ext.compose-ssh\n"
    "isolation: {level: container}\ninputs:\n  repo: {required: true}\n",
    "profile.bench-vm": "id: profile.bench-vm\nextension: ext.vm-packer\n"
    "isolation: {level: policy}\nnetwork: {default: allow}\n"  # vm-packer enforces no policy
    "inputs:\n  repo: {required: true}\n",
}


async def by_hand(host, repo: Path, i: int, *, compose: bool) -> float:  # type: ignore[no-untyped-def]
    """One create by hand, in ms (the teardown after it is not timed)."""
    directory = f"{host.host.workspace_root}/byhand{i}"
    base = ["docker-compose", "-p", f"byhand{i}", "-f", f"{directory}/docker-compose.yml"]
    started = time.perf_counter()
    async with session(host.name, host.host) as conn:
        # sync_dir makes the directory (in the same command that asks for rsync).
        await sync.sync_dir(host.name, host.host, conn, repo, directory)
        if compose:
            await remote.put_file(conn, f"{directory}/.env", b"TOKEN=x\n")
            listed = await remote.run(
                conn, [*base, "config", "--services"], env=host.host.env, cwd=directory
            )
            services = {name: {"network_mode": "none"} for name in listed.stdout.split()}
            override = f"{directory}/no-network.json"
            await remote.put_file(conn, override, json.dumps({"services": services}).encode())
            up = [*base, "-f", override, "up", "-d"]
            await remote.run(conn, up, env=host.host.env, cwd=directory)
            twice = 'docker ps -q --filter "$1"; sleep "$2"; docker ps -q --filter "$1"'
            label = f"label=com.docker.compose.project=byhand{i}"
            await remote.run(
                conn, ["sh", "-c", twice, "sh", label, str(STABLE_AFTER)], env=host.host.env
            )
    elapsed = (time.perf_counter() - started) * 1000
    async with session(host.name, host.host) as conn:
        if compose:
            await remote.run(
                conn, [*base, "down", "-t", "1", "-v"], env=host.host.env, cwd=directory
            )
        await remote.run(conn, ["rm", "-rf", directory])
    return elapsed


async def through_sandboxer(client, profile: str, ref: str) -> float:  # type: ignore[no-untyped-def]
    """One create -> ready as a client on another machine does it, in ms: the repo goes as
    an upload (``ref``, stored once; the worker fetches, checks and unpacks it, then syncs
    it to the host). The destroy after it is not timed."""
    started = time.perf_counter()
    ready = await client.create(profile, {"repo": ref})
    elapsed = (time.perf_counter() - started) * 1000
    await client.destroy(ready["sandbox_id"])
    return elapsed


async def interleaved(
    host, client, repo: Path, profile: str, *, compose: bool
) -> tuple[list[float], list[float]]:  # type: ignore[no-untyped-def]
    """RUNS creates each way, alternating (a noisy neighbour slows both alike): (by hand, ours)."""
    ref = (await client.upload_directory(repo)).ref
    await through_sandboxer(client, profile, ref)  # warm-up: imports, consumers, the host probe
    raw, ours = [], []
    for i in range(RUNS):
        raw.append(await by_hand(host, repo, i, compose=compose))
        ours.append(await through_sandboxer(client, profile, ref))
    return raw, ours


async def rows() -> list[Row]:
    require_tool("sshd", "openssh-server")
    require_tool("rsync", "rsync")
    tmp = Path(tempfile.mkdtemp(prefix="sandboxer-bench-remote-"))
    engine = await start_docker_engine()
    hosts = SshHosts(tmp / "ssh", shutil.which("sshd") or "/usr/sbin/sshd")
    try:
        [host] = await hosts(1, env=engine.env)
        repo = tmp / "repo"
        repo.mkdir()
        (repo / "docker-compose.yml").write_text(COMPOSE)
        for i in range(20):
            (repo / f"file{i}.txt").write_text("x" * 1000)
        home = tmp / "home"
        (home / "profiles").mkdir(parents=True)
        for name, text in PROFILES.items():
            (home / "profiles" / f"{name}.yaml").write_text(text)
        write_hosts_file(home / "hosts.yaml", [host])
        os.environ["SANDBOXER_HOME"] = str(home)
        async with nats(tmp) as server, service(tmp, server.url) as client:
            progress(f"remote: {RUNS} compose stacks by hand and through ext.compose-ssh")
            compose_raw, compose_bus = await interleaved(
                host, client, repo, "profile.bench-compose", compose=True
            )
            progress(f"remote: {RUNS} VM workspaces by hand and through ext.vm-packer")
            vm_raw, vm_bus = await interleaved(
                host, client, repo, "profile.bench-vm", compose=False
            )
    finally:
        await hosts.close()
        await asyncio.to_thread(engine.stop)
        shutil.rmtree(tmp, ignore_errors=True)
    target = Target("<=", 1.2, "ratio")
    return [
        *percentile_rows(
            "compose-ssh create→ready", "ms", compose_bus, compose_raw, "by hand over SSH", target
        ),
        *percentile_rows(
            "vm-packer create→ready", "ms", vm_bus, vm_raw, "by hand over SSH", target
        ),
    ]


if __name__ == "__main__":
    main(
        rows,
        [
            Row("compose-ssh create→ready p50", "ms", target=Target("<=", 1.2, "ratio")),
            Row("vm-packer create→ready p50", "ms", target=Target("<=", 1.2, "ratio")),
        ],
    )
