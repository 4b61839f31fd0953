"""Snapshots of the SSH backends and restores across backends, against real sshd hosts and a
real container engine: ext.vm-packer <-> ext.local and ext.compose-ssh <-> ext.local, with the
files checked on arrival and the secrets file left out of every snapshot; a compose snapshot
carries the project's named volumes, filled again before the restored stack starts."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sandboxer.client import SandboxerClient
from sandboxer.errors import CommandFailed
from tests.integration.conftest import Service, serving
from tests.integration.remote_fixtures import (
    ENGINES,
    TWO_SERVICE_COMPOSE,
    ComposeEngine,
    SshHostInfo,
    SshHosts,
    make_repo,
    write_remote_home,
)
from tests.integration.test_snapshots import run_in

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRET = "snapshot-secret-that-must-stay-behind"

PROFILES = {
    "profile.snap-vm": """\
id: profile.snap-vm
extension: ext.vm-packer
network: {default: allow}
isolation: {level: policy}
placement: {host_input: vm}
setup:
  secret_refs: {API_TOKEN: env:SANDBOXER_TEST_SECRET}
inputs:
  vm: {required: true}
  repo: {type: directory, required: false}
""",
    "profile.snap-compose": """\
id: profile.snap-compose
extension: ext.compose-ssh
isolation: {level: container}
placement: {prefer: [host1], fallback: [host2]}
setup:
  secret_refs: {API_TOKEN: env:SANDBOXER_TEST_SECRET}
inputs:
  repo: {type: directory, required: true}
  compose_file: {required: false}
""",
}


Serving = Callable[..., contextlib.AbstractAsyncContextManager[Service]]


@pytest.fixture
def snapshot_service(nats_server: Any, home: Path, monkeypatch: pytest.MonkeyPatch) -> Serving:
    """``async with snapshot_service(hosts) as service``: every role over ``hosts`` with this
    module's profiles and secret (``options`` as for start_service); on the way out the
    service stops and the ext.local sandboxes it restored are torn down."""
    monkeypatch.setenv("SANDBOXER_TEST_SECRET", SECRET)

    def serve(
        hosts: list[SshHostInfo], **options: Any
    ) -> contextlib.AbstractAsyncContextManager[Service]:
        write_remote_home(home, hosts, PROFILES)
        return serving(home, nats_server.url, reap=True, **options)

    return serve


async def restore_local(client: SandboxerClient, snapshot_id: str) -> str:
    ready = await client.restore(snapshot_id, profile="profile.local")
    sandbox_id: str = ready["sandbox_id"]
    got = await client.get(sandbox_id)
    assert got is not None
    assert (got["restored_from"], got["extension"]) == (snapshot_id, "ext.local")
    return sandbox_id


async def test_vm_workspace_restores_locally_and_back(
    tmp_path: Path,
    ssh_hosts: SshHosts,
    snapshot_service: Serving,
) -> None:
    hosts = await ssh_hosts(2)
    async with snapshot_service(hosts) as service:
        client = service.client
        repo = make_repo(tmp_path / "repo")
        vm = await client.create("profile.snap-vm", {"vm": "host1", "repo": str(repo)})
        code = await client.exec(
            vm["sandbox_id"], ["sh", "-c", "echo made on the vm > made.txt"], lambda _s, _d: None
        )
        assert code == 0
        assert (Path(vm["reachability"]["workspace"]) / ".sandboxer.env").exists()
        taken = await client.snapshot(vm["sandbox_id"], name="vm")
        assert (taken["extension"], taken["host"]) == ("ext.vm-packer", "host1")

        # ext.vm-packer -> ext.vm-packer (its own profile, another VM)
        same = await client.restore(taken["snapshot_id"], inputs={"vm": "host2"})
        same_workspace = Path(same["reachability"]["workspace"])
        assert (same_workspace / "made.txt").read_text() == "made on the vm\n"
        await client.destroy(same["sandbox_id"])

        # ext.vm-packer -> ext.local
        local = await restore_local(client, taken["snapshot_id"])
        assert await run_in(client, local, "cat /workspace/made.txt") == "made on the vm\n"
        assert await run_in(client, local, "cat /workspace/README") == "the repo\n"
        assert await run_in(client, local, "test ! -e /workspace/.sandboxer.env && echo gone")

        # ext.local -> ext.vm-packer (another VM)
        await run_in(client, local, "echo changed locally > /workspace/made.txt")
        from_local = await client.snapshot(local)
        back = await client.restore(
            from_local["snapshot_id"], profile="profile.snap-vm", inputs={"vm": "host2"}
        )
        workspace = Path(back["reachability"]["workspace"])
        assert back["reachability"]["host"] == "host2"
        assert (workspace / "made.txt").read_text() == "changed locally\n"
        assert (workspace / "README").read_text() == "the repo\n"
        # The restored VM sandbox got its own secrets file, from its own profile.
        assert (workspace / ".sandboxer.env").stat().st_mode & 0o777 == 0o600
        await client.destroy(back["sandbox_id"])
        await client.destroy(vm["sandbox_id"])


async def test_compose_workspace_restores_locally_and_back(
    tmp_path: Path,
    compose_hosts: list[SshHostInfo],
    snapshot_service: Serving,
) -> None:
    async with snapshot_service(compose_hosts) as service:
        client = service.client
        stack = await client.create(
            "profile.snap-compose", {"repo": str(make_repo(tmp_path / "r"))}
        )
        taken = await client.snapshot(stack["sandbox_id"])
        assert taken["extension"] == "ext.compose-ssh"

        # ext.compose-ssh -> ext.compose-ssh (its own profile)
        same = await client.restore(taken["snapshot_id"])
        assert (Path(same["reachability"]["directory"]) / "README").read_text() == "the repo\n"
        await client.destroy(same["sandbox_id"])

        # ext.compose-ssh -> ext.local
        local = await restore_local(client, taken["snapshot_id"])
        assert await run_in(client, local, "cat /workspace/README") == "the repo\n"
        # The user's own files, as given: compose-ssh never rewrites the compose file, and the
        # override it wrote beside it (deny: .sandboxer.no-network.yaml) stays behind.
        compose = await run_in(client, local, "cat /workspace/docker-compose.yml")
        assert compose == TWO_SERVICE_COMPOSE
        assert await run_in(client, local, "ls -A /workspace") == "README\ndocker-compose.yml\n"

        # ext.local -> ext.compose-ssh: the stack comes up from the restored files.
        await run_in(client, local, "echo written locally > /workspace/note.txt")
        from_local = await client.snapshot(local)
        back = await client.restore(from_local["snapshot_id"], profile="profile.snap-compose")
        directory = Path(back["reachability"]["directory"])
        assert (directory / "note.txt").read_text() == "written locally\n"
        assert sorted(back["reachability"]["services"]) == ["web", "worker"]
        await client.destroy(back["sandbox_id"])
        await client.destroy(stack["sandbox_id"])


VOLUME_COMPOSE = """\
services:
  web:
    image: localhost/mini:latest
    command: ["sleep", "3600"]
    network_mode: none
    init: true
    volumes:
      - data:/srv/data
  worker:
    image: localhost/mini:latest
    command: ["sleep", "3600"]
    network_mode: none
    init: true
    volumes:
      - data:/mnt/shared
      - cache:/var/cache/app
volumes:
  data: {}
  cache: {}
"""


async def output_of(
    client: SandboxerClient, sandbox_id: str, script: str, service: str = "web"
) -> str:
    out = bytearray()

    async def collect(_stream: str, data: bytes) -> None:
        out.extend(data)

    code = await client.exec(sandbox_id, ["sh", "-c", script], collect, service=service)
    assert code == 0, out.decode()
    return out.decode()


@pytest.mark.parametrize("compose_engine", ENGINES, indirect=True)
async def test_compose_named_volumes_travel_with_the_snapshot(
    tmp_path: Path,
    compose_hosts: list[SshHostInfo],
    compose_engine: ComposeEngine,
    snapshot_service: Serving,
) -> None:
    async with snapshot_service(compose_hosts) as service:
        client = service.client
        repo = tmp_path / "r"
        repo.mkdir()
        (repo / "docker-compose.yml").write_text(VOLUME_COMPOSE)
        stack = await client.create("profile.snap-compose", {"repo": str(repo)})
        source = stack["sandbox_id"]
        # Written into the volumes through exec: only the engine's volumes hold these.
        await output_of(
            client,
            source,
            "mkdir -p /srv/data/db && echo kept in the volume > /srv/data/db/row.txt && "
            "ln -s db/row.txt /srv/data/latest && echo 'x; $(touch /tmp/pwned)' > '/srv/data/odd name'",
        )
        await output_of(client, source, "echo cached > /var/cache/app/c.bin", service="worker")
        assert not (Path(stack["reachability"]["directory"]) / ".sandboxer").exists()

        taken = await client.snapshot(source, name="with-volumes")
        # The original is gone, volumes and all, before the restore.
        await client.destroy(source)
        project = f"sbx-{source}"
        assert project not in compose_engine.cli("volume", "ls", "-q").stdout

        restored = await client.restore(taken["snapshot_id"])
        new_id = restored["sandbox_id"]
        assert await output_of(client, new_id, "cat /srv/data/db/row.txt") == "kept in the volume\n"
        assert await output_of(client, new_id, "cat /srv/data/latest") == "kept in the volume\n"
        assert (
            await output_of(client, new_id, "cat '/srv/data/odd name'")
            == "x; $(touch /tmp/pwned)\n"
        )
        assert (
            await output_of(client, new_id, "cat /mnt/shared/db/row.txt", service="worker")
            == "kept in the volume\n"
        )
        assert (
            await output_of(client, new_id, "cat /var/cache/app/c.bin", service="worker")
            == "cached\n"
        )
        # The copies were taken out of the directory before the stack started.
        directory = Path(restored["reachability"]["directory"])
        assert (directory / "docker-compose.yml").exists()
        assert not (directory / ".sandboxer").exists()
        volumes = compose_engine.cli("volume", "ls", "-q").stdout.split()
        assert {f"sbx-{new_id}_data", f"sbx-{new_id}_cache"} <= set(volumes)

        # Into ext.local, the volumes arrive as files of the workspace.
        local = await restore_local(client, taken["snapshot_id"])
        assert (
            await run_in(client, local, "cat /workspace/.sandboxer/volumes/data/db/row.txt")
            == "kept in the volume\n"
        )
        assert (
            await run_in(client, local, "cat /workspace/.sandboxer/volumes/cache/c.bin")
            == "cached\n"
        )
        await client.destroy(new_id)


async def test_compose_volume_names_from_the_tree_are_checked(
    tmp_path: Path,
    ssh_hosts: SshHosts,
    compose_engine: ComposeEngine,
    snapshot_service: Serving,
) -> None:
    hosts = await ssh_hosts(1, env=compose_engine.env, compose_cmd=compose_engine.compose_cmd)
    async with snapshot_service(hosts) as service:
        client = service.client
        # A name that could pass for an option: refused before anything reaches the host.
        hostile = tmp_path / "hostile"
        (hostile / ".sandboxer" / "volumes" / "--help").mkdir(parents=True)
        (hostile / "docker-compose.yml").write_text(VOLUME_COMPOSE)
        with pytest.raises(CommandFailed) as caught:
            await client.create("profile.snap-compose", {"repo": str(hostile)})
        assert caught.value.event["type"] == "failed"
        assert "'--help'" in caught.value.event["reason"]
        assert not list(Path(hosts[0].host.workspace_root).glob("sbx-*"))

        # A well-formed key that no service mounts: the create fails, nothing is left.
        stray = tmp_path / "stray"
        (stray / ".sandboxer" / "volumes" / "elsewhere").mkdir(parents=True)
        (stray / "docker-compose.yml").write_text(VOLUME_COMPOSE)
        with pytest.raises(CommandFailed) as caught:
            await client.create("profile.snap-compose", {"repo": str(stray)})
        assert "elsewhere" in caught.value.event["reason"]
        project = f"sbx-{caught.value.event['sandbox_id']}"
        assert project not in compose_engine.cli("ps", "-a", "--format", "{{.Names}}").stdout
        assert project not in compose_engine.cli("volume", "ls", "-q").stdout


SPECIAL_COMPOSE = """\
services:
  web:
    image: localhost/mini:latest
    command: ["sleep", "3600"]
    network_mode: none
    init: true
    volumes:
      - .:/app
      - data:/srv/data
volumes:
  data: {}
"""

# What a sandbox's own code can make, in the project's directory (mounted at /app) and in a
# named volume: hard links, FIFOs and, as root with the engine's default CAP_MKNOD, a device.
MAKE_SPECIAL_FILES = (
    "for d in /app /srv/data; do echo linked > $d/one && ln $d/one $d/two && mkfifo $d/pipe "
    "&& mknod $d/null c 1 3 || exit 1; done"
)


@pytest.mark.parametrize("compose_engine", ENGINES, indirect=True)
async def test_hard_links_fifos_and_devices_do_not_fail_a_compose_snapshot(
    tmp_path: Path,
    ssh_hosts: SshHosts,
    compose_engine: ComposeEngine,
    snapshot_service: Serving,
) -> None:
    hosts = await ssh_hosts(1, env=compose_engine.env, compose_cmd=compose_engine.compose_cmd)
    async with snapshot_service(hosts) as service:
        client = service.client
        repo = tmp_path / "r"
        repo.mkdir()
        (repo / "docker-compose.yml").write_text(SPECIAL_COMPOSE)
        stack = await client.create("profile.snap-compose", {"repo": str(repo)})
        await output_of(client, stack["sandbox_id"], MAKE_SPECIAL_FILES)
        directory = Path(stack["reachability"]["directory"])
        assert (directory / "two").stat().st_nlink == 2
        assert (directory / "pipe").is_fifo()

        taken = await client.snapshot(stack["sandbox_id"])
        assert taken["status"] == "created"
        # What was left out is told, a volume's below its directory (in the host tar's order).
        told = {
            line.split(": ")[0]: set(line.split(": ")[1].split(", ")) for line in taken["warnings"]
        }
        assert told == {
            "left out 2 FIFOs": {"pipe", ".sandboxer/volumes/data/pipe"},
            "left out 2 device nodes": {"null", ".sandboxer/volumes/data/null"},
        }
        # Each name of a hard link arrives as a file of its own; FIFOs and devices stay behind.
        local = await restore_local(client, taken["snapshot_id"])
        listing = (
            "cd /workspace && for d in . .sandboxer/volumes/data; do "
            "ls -A $d | grep -v '^.sandboxer' | tr '\\n' ' '; cat $d/one $d/two; "
            "stat -c %h $d/two; done"
        )
        one_each = "docker-compose.yml one two linked\nlinked\n1\n"
        assert await run_in(client, local, listing) == one_each + "one two linked\nlinked\n1\n"
        await client.destroy(stack["sandbox_id"])


async def test_a_compose_snapshot_s_volumes_share_one_limit_with_its_directory(
    tmp_path: Path,
    ssh_hosts: SshHosts,
    compose_engine: ComposeEngine,
    snapshot_service: Serving,
) -> None:
    """Each volume was copied out against the whole limit by itself, so a stack of N volumes
    (sparse files: free on the host, whole in the copy) put N times the limit on the worker's
    disk before the packing refused the sum (review 2026-12-04). Now the copy of a volume
    stops at what the directory and the volumes before it left of the limit."""
    hosts = await ssh_hosts(1, env=compose_engine.env, compose_cmd=compose_engine.compose_cmd)
    async with snapshot_service(hosts, upload_max_mb=2) as service:
        client = service.client
        repo = tmp_path / "r"
        repo.mkdir()
        (repo / "docker-compose.yml").write_text(VOLUME_COMPOSE)
        stack = await client.create("profile.snap-compose", {"repo": str(repo)})
        source = stack["sandbox_id"]
        fill = "dd if=/dev/zero of={} bs=1024 count=1536 2>/dev/null"
        await output_of(client, source, fill.format("/var/cache/app/a"), service="worker")
        await output_of(client, source, fill.format("/srv/data/b"))
        with pytest.raises(CommandFailed) as failed:
            await client.snapshot(source)
        # cache (1.5 MiB) is copied first; data stops at the half MiB it left, on the host's
        # stream, not in the packing of 3 MiB that followed it.
        assert f"the volume sbx-{source}_data is larger than the" in failed.value.message
        assert "left of the snapshot's 2 MiB (SANDBOXER_UPLOAD_MAX_MB)" in failed.value.message
        assert not [p for p in service.settings.staging_root.iterdir() if "snapshot" in p.name]
        got = await client.get(source)
        assert got is not None
        assert got["snapshotting"] is None
        await client.destroy(source)
