"""Exec with standard input and a timeout, and copies both ways, on the SSH backends: a
compose sandbox on dockerd and on podman, and a VM sandbox (ext.vm-packer), each on its
own real sshd host, through the real service over the bus.

One service, three hosts and three sandboxes serve the whole module (made once: a
compose stack takes seconds to come up). Every test runs on each of the three. The
hosts are this machine, so what a command leaves running (a container's processes
included) shows in this machine's ``/proc``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.client import CommandFailed, SandboxerClient
from sandboxer.config.settings import Settings
from sandboxer.errors import PathRefused
from tests.conftest import require_tool
from tests.integration.conftest import Service, start_service
from tests.integration.remote_fixtures import (
    DockerEngine,
    PodmanEngine,
    SshHosts,
    _shared_engine,
    write_hosts_file,
)
from tests.integration.test_exec_files import listing, nested_tree

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="module"),
]

BACKENDS = ("compose-docker", "compose-podman", "vm")

COMPOSE = """\
services:
  app:
    image: localhost/mini:latest
    command: ["sleep", "3600"]
    working_dir: /root
    network_mode: none
    init: true
"""

PROFILES = {
    "profile.rx-compose-docker": """\
id: profile.rx-compose-docker
extension: ext.compose-ssh
isolation: {level: container}
placement: {prefer: [host1]}
inputs:
  repo: {type: directory, required: true}
""",
    "profile.rx-compose-podman": """\
id: profile.rx-compose-podman
extension: ext.compose-ssh
isolation: {level: container}
placement: {prefer: [host2]}
inputs:
  repo: {type: directory, required: true}
""",
    "profile.rx-vm": """\
id: profile.rx-vm
extension: ext.vm-packer
isolation: {level: policy}
placement: {host_input: vm}
network: {default: allow}
inputs:
  vm: {required: true}
""",
}


def every_byte(size: int) -> bytes:
    """``size`` bytes holding all 256 values, NUL and newline included, in no simple run."""
    block = bytes(range(256)) + bytes(range(255, -1, -1)) + hashlib.sha256(b"x").digest()
    return (block * (size // len(block) + 1))[:size]


@dataclass
class Remote:
    service: Service
    sandboxes: dict[str, str]
    """Backend name (of :data:`BACKENDS`) -> its sandbox id."""


@pytest.fixture(scope="module")
def engines() -> Iterator[tuple[DockerEngine, PodmanEngine]]:
    with _shared_engine("docker") as docker, _shared_engine("podman") as podman:
        assert isinstance(docker, DockerEngine)
        assert isinstance(podman, PodmanEngine)
        yield docker, podman


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def remote(
    tmp_path_factory: pytest.TempPathFactory, engines: tuple[DockerEngine, PodmanEngine]
) -> AsyncIterator[Remote]:
    docker, podman = engines
    root = tmp_path_factory.mktemp("remote-exec")
    home = root / "home"
    (home / "profiles").mkdir(parents=True)
    for name, text in PROFILES.items():
        (home / "profiles" / f"{name}.yaml").write_text(text)
    hosts = SshHosts(root / "ssh", require_tool("sshd", "openssh-server"))
    server = NatsServerProcess(
        root / "nats", binary=Settings.from_env().nats_server, port=0, server_name="test"
    )
    await server.start()
    service: Service | None = None
    try:
        found = [
            *await hosts(1, env=docker.env, compose_cmd=docker.compose_cmd),
            *await hosts(1, env=podman.env, compose_cmd=podman.compose_cmd),
            *await hosts(1),
        ]
        write_hosts_file(home / "hosts.yaml", found)
        repo = root / "repo"
        repo.mkdir()
        (repo / "docker-compose.yml").write_text(COMPOSE)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SANDBOXER_HOME", str(home))
            service = await start_service(home, server.url)
        made = await asyncio.gather(
            service.client.create("profile.rx-compose-docker", {"repo": str(repo)}),
            service.client.create("profile.rx-compose-podman", {"repo": str(repo)}),
            service.client.create("profile.rx-vm", {"vm": "host3"}),
            return_exceptions=True,
        )
        sandboxes = {
            name: str(ready["sandbox_id"])
            for name, ready in zip(BACKENDS, made, strict=True)
            if isinstance(ready, dict)
        }
        try:
            for outcome in made:
                if isinstance(outcome, BaseException):
                    raise outcome
            yield Remote(service, sandboxes)
        finally:
            for sandbox_id in sandboxes.values():
                await service.client.destroy(sandbox_id)
    finally:
        if service is not None:
            await service.client.close()
            await service.shutdown()
        await hosts.close()
        await server.stop()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def run_in(client: SandboxerClient, sandbox_id: str, script: str) -> tuple[int, bytes]:
    out: list[bytes] = []
    code = await client.exec(sandbox_id, ["sh", "-c", script], lambda _s, d: out.append(d))
    return code, b"".join(out)


def running_here(marker: str) -> list[str]:
    """Command lines of this machine's live processes that contain ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in line:
            found.append(f"{entry.name}: {line}")
    return found


# -- exec --------------------------------------------------------------------------------------


async def test_stdin_of_more_than_a_mebibyte_and_an_async_stream(
    remote: Remote, backend: str
) -> None:
    client, sandbox_id = remote.service.client, remote.sandboxes[backend]
    data = every_byte(1_500_000) + os.urandom(4096)
    out: list[bytes] = []
    code = await client.exec(
        sandbox_id, ["cat"], lambda s, d: out.append(d) if s == "stdout" else None, stdin=data
    )
    assert code == 0
    assert b"".join(out) == data

    async def pieces() -> AsyncIterator[bytes]:
        for index in range(6):
            await asyncio.sleep(0.05)  # input arriving over time, as from a pipe
            yield bytes([index * 40]) * 10_000

    out.clear()
    code = await client.exec(
        sandbox_id,
        ["sh", "-c", "wc -c; echo done >&2; exit 5"],
        lambda s, d: out.append(d) if s == "stdout" else None,
        stdin=pieces(),
    )
    assert code == 5
    assert b"".join(out).strip() == b"60000"


async def test_a_timeout_kills_the_command_and_all_it_started(remote: Remote, backend: str) -> None:
    client, sandbox_id = remote.service.client, remote.sandboxes[backend]
    # A number of seconds no other test sleeps, so its processes can be found by name.
    seconds = {"compose-docker": 3301, "compose-podman": 3302, "vm": 3303}[backend]
    out: list[bytes] = []
    script = f"echo before; sleep {seconds} & sleep {seconds + 100}; echo after"
    with pytest.raises(CommandFailed) as failed:
        # command_timeout: long enough for a loaded machine to start the exec and print "before".
        await client.exec(
            sandbox_id, ["sh", "-c", script], lambda _s, d: out.append(d), command_timeout=4
        )
    assert failed.value.event["timed_out"] is True
    assert "killed" in failed.value.message
    assert b"".join(out) == b"before\n"
    # Nothing of it is left: neither the command nor the job it put in the background.
    assert running_here(f"sleep {seconds}") == []
    assert running_here(f"sleep {seconds + 100}") == []
    code, text = await run_in(
        client, sandbox_id, "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '"
    )
    assert code == 0
    assert f"sleep {seconds}".encode() not in text
    # And the sandbox still runs commands.
    assert await run_in(client, sandbox_id, "echo alive") == (0, b"alive\n")


# -- copies ------------------------------------------------------------------------------------


async def test_cp_round_trips_binary_files_and_a_nested_directory(
    remote: Remote, backend: str, tmp_path: Path
) -> None:
    client, sandbox_id = remote.service.client, remote.sandboxes[backend]
    small = every_byte(256)
    assert set(small) == set(range(256))
    big = every_byte(1_300_000) + os.urandom(10_000)
    for name, data in (("bytes.bin", small), ("big.bin", big)):
        local = tmp_path / name
        local.write_bytes(data)
        copied = await client.copy_in(sandbox_id, local, f"in/{name}")
        assert (copied.kind, copied.path) == ("file", f"in/{name}")
        code, text = await run_in(client, sandbox_id, f"sha256sum in/{name}")
        assert (code, text.split()[0].decode()) == (0, hashlib.sha256(data).hexdigest())
        back = await client.copy_out(sandbox_id, f"in/{name}", tmp_path / f"{name}.back")
        assert back.kind == "file"
        assert (tmp_path / f"{name}.back").read_bytes() == data

    tree = nested_tree(tmp_path / "tree")
    (tree / "a" / "b" / "every.bin").write_bytes(small)
    copied = await client.copy_in(sandbox_id, tree, "project")
    assert copied.kind == "dir"
    code, text = await run_in(client, sandbox_id, "cd project && ./a/run.sh && cat a/link")
    assert (code, text) == (0, b"ran\nmiddle\n")
    await client.copy_out(sandbox_id, "project", tmp_path / "fetched")
    assert listing(tmp_path / "fetched") == listing(tree)


async def test_paths_out_of_the_workspace_are_refused_both_ways(
    remote: Remote, backend: str, tmp_path: Path
) -> None:
    client, sandbox_id = remote.service.client, remote.sandboxes[backend]
    code, _ = await run_in(
        client,
        sandbox_id,
        "mkdir -p trap && ln -sfn /etc trap/etc && ln -sfn /etc/passwd trap/pw "
        "&& ln -sfn ../.. trap/up",
    )
    assert code == 0
    payload = tmp_path / "payload"
    payload.write_bytes(b"payload")
    reads = {
        "../../etc/passwd": "climbs",
        "/etc/passwd": "absolute",
        "trap/pw": "leads out of the workspace",
        "trap/etc/passwd": "leads out of the workspace",
        "trap/up": "leads out of the workspace",
    }
    for path, reason in reads.items():
        with pytest.raises(PathRefused, match=reason):
            await client.copy_out(sandbox_id, path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    writes = {
        "../escape": "climbs",
        "/tmp/escape": "absolute",
        "trap/etc/evil": "leads out of the workspace",
        "trap/up/evil": "leads out of the workspace",
    }
    for path, reason in writes.items():
        with pytest.raises(PathRefused, match=reason):
            await client.copy_in(sandbox_id, payload, path)
    code, _ = await run_in(client, sandbox_id, "[ ! -e /etc/evil ] && [ ! -e ../evil ]")
    assert code == 0
