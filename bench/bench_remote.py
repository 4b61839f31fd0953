"""create -> ready for ext.compose-ssh and ext.vm-packer against a loopback SSH host.

Baseline, measured in the same run: the same steps done by hand over one
SSH connection (connect, make the directory, rsync the repo, write the env
file, ``docker-compose up -d``, list the containers; for the VM: connect,
make the workspace, rsync), so the difference is sandboxer's overhead
(bus, placement probe, events, checks).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _harness import nats, service, summary

from sandboxer.ssh import remote, session, sync
from tests.integration.remote_fixtures import (
    DockerEngine,
    SshHosts,
    write_hosts_file,
)

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


async def by_hand(host, repo: Path, n: int, *, compose: bool) -> list[float]:  # type: ignore[no-untyped-def]
    times = []
    for i in range(n):
        directory = f"{host.host.workspace_root}/byhand{i}"
        started = time.perf_counter()
        async with session(host.name, host.host) as conn:
            await remote.run(conn, ["mkdir", "-p", directory], env=host.host.env)
            await sync.sync_dir(host.name, host.host, conn, repo, directory)
            if compose:
                await remote.put_file(conn, f"{directory}/.env", b"TOKEN=x\n")
                base = [
                    "docker-compose",
                    "-p",
                    f"byhand{i}",
                    "-f",
                    f"{directory}/docker-compose.yml",
                ]
                await remote.run(conn, [*base, "up", "-d"], env=host.host.env, cwd=directory)
                await remote.run(conn, [*base, "ps", "-q"], env=host.host.env, cwd=directory)
        times.append((time.perf_counter() - started) * 1000)
        async with session(host.name, host.host) as conn:
            if compose:
                await remote.run(
                    conn, [*base, "down", "-t", "1", "-v"], env=host.host.env, cwd=directory
                )
            await remote.run(conn, ["rm", "-rf", directory])
    return times


async def through_sandboxer(client, profile: str, repo: Path, n: int) -> list[float]:  # type: ignore[no-untyped-def]
    """Create -> ready as a client on another machine does it: the repo goes as an upload
    (stored once; the worker fetches, checks and unpacks it, then syncs it to the host)."""
    uploaded = await client.upload_directory(repo)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        ready = await client.create(profile, {"repo": uploaded.ref})
        times.append((time.perf_counter() - started) * 1000)
        await client.destroy(ready["sandbox_id"])
    return times


async def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="sandboxer-bench-remote-"))
    engine = DockerEngine.start()
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
            await through_sandboxer(client, "profile.bench-compose", repo, 1)  # warm-up
            compose_raw = await by_hand(host, repo, RUNS, compose=True)
            compose_bus = await through_sandboxer(client, "profile.bench-compose", repo, RUNS)
            vm_raw = await by_hand(host, repo, RUNS, compose=False)
            vm_bus = await through_sandboxer(client, "profile.bench-vm", repo, RUNS)
    finally:
        await hosts.close()
        engine.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"compose by hand over SSH        : {summary(compose_raw)}")
    print(f"compose-ssh create -> ready     : {summary(compose_bus)}")
    print(f"vm workspace by hand over SSH   : {summary(vm_raw)}")
    print(f"vm-packer create -> ready       : {summary(vm_bus)}")


if __name__ == "__main__":
    asyncio.run(main())
