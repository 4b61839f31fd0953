"""A remote backend's work held up in an extension worker, and what a later attempt made.

Real ext.compose-ssh (an sshd host on loopback, a private dockerd with docker-compose),
real nats-server, extension workers on one job queue. A recreate's clean start is held (as
SIGSTOP, or a cut to NATS past ``ack_wait``, holds a worker) after its look at the log; the
job goes to a second worker, which makes generation 2 and records ``ready``. The held worker
then goes on: its teardown must leave the sandbox the log's ``ready`` names. As
test_attempt_fencing.py shows for ext.local. And on ext.vm-packer (the same shared code,
no engine), an earlier attempt resumed late against a later one's workspace: its create
and its teardown, one after the other and raced.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from nats.js import JetStreamContext

from sandboxer.bus.connect import connect
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.config.catalog import Catalog
from sandboxer.config.settings import Settings
from sandboxer.errors import ExtensionError
from sandboxer.extensions.base import ProvisionRequest
from sandboxer.extensions.compose_ssh import backend as compose_ssh_backend
from sandboxer.extensions.compose_ssh.backend import ComposeSshExtension
from sandboxer.extensions.ssh_workspace import Claim
from sandboxer.extensions.vm_packer import backend as vm_packer_backend
from sandboxer.extensions.vm_packer.backend import VmPackerExtension
from sandboxer.workers.extension_worker import ExtensionWorker
from sandboxer.workspaces.limits import ArchiveLimits
from sandboxer.workspaces.materialize import DirectoryInputs
from tests.integration.conftest import start_service
from tests.integration.remote_fixtures import (
    TWO_SERVICE_COMPOSE,
    DockerEngine,
    SshHosts,
    write_hosts_file,
)
from tests.integration.test_attempt_fencing import HeldTeardowns, Silent
from tests.integration.test_lifecycle import event_types

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROFILE = """\
id: profile.fenced-compose
extension: ext.compose-ssh
isolation: {level: container}
placement: {prefer: [host1]}
inputs:
  repo: {required: true}
"""


def _worker(
    js: JetStreamContext, store: JetStreamEventStore, catalog: Catalog, settings: Settings
) -> ExtensionWorker:
    """An ext.compose-ssh worker as the service builds one (host paths under the test's
    tmp_path accepted), with a one-second ack wait."""
    return ExtensionWorker(
        js,
        store,
        catalog,
        ComposeSshExtension(settings),
        ack_wait=1,
        directories=DirectoryInputs(
            js,
            roots=settings.input_roots,
            staging_root=settings.staging_root,
            limits=ArchiveLimits.from_mb(settings.upload_max_mb),
        ),
    )


def _project_containers(engine: DockerEngine, project: str) -> list[str]:
    """The ids of the project's running containers."""
    out = engine.cli(
        "ps", "-q", "--no-trunc", "--filter", f"label=com.docker.compose.project={project}"
    ).stdout
    return sorted(out.split())


async def test_a_recreate_held_before_its_clean_start_leaves_the_later_attempt_s_stack(
    nats_server: NatsServerProcess,
    home: Path,
    tmp_path: Path,
    ssh_hosts: SshHosts,
    docker_engine: DockerEngine,
) -> None:
    """A recreate's worker is held after its look at the log, before it removes generation
    1's stack; the job goes to a second worker, whose attempt 2 removes generation 1's,
    makes generation 2's and records `ready`. The held worker then goes on: its clean start
    (attempt 1's, through teardown_attempt) must leave that stack and its directory alone,
    or the log's `ready` names containers that no longer run (a plain teardown removed
    them, as it did before compose-ssh was AttemptScoped)."""
    hosts = await ssh_hosts(1, env=docker_engine.env, compose_cmd=docker_engine.compose_cmd)
    write_hosts_file(home / "hosts.yaml", hosts)
    (home / "profiles").mkdir(exist_ok=True)
    (home / "profiles" / "profile.fenced-compose.yaml").write_text(PROFILE)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "docker-compose.yml").write_text(TWO_SERVICE_COMPOSE)
    service = await start_service(home, nats_server.url, roles=["control", "projector"])
    nc = await connect([nats_server.url], name="test-remote-fencing")
    js = nc.jetstream()
    store = JetStreamEventStore(nc, js)
    catalog = Catalog.load(home)
    settings = service.settings
    maker = _worker(js, store, catalog, settings)
    held = _worker(js, store, catalog, settings)
    hold = HeldTeardowns(held.extension)
    held.spec = Silent(**{**dataclasses.asdict(held.spec), "concurrency": 1})
    other = _worker(js, store, catalog, settings)
    stops = asyncio.Event(), asyncio.Event(), asyncio.Event()
    workers = [asyncio.create_task(maker.run(stops[0]))]
    client = service.client
    sandbox_id = None
    try:
        ready = await client.create("profile.fenced-compose", {"repo": str(repo)})
        sandbox_id = ready["sandbox_id"]
        project = ready["reachability"]["compose_project"]
        stops[0].set()
        await workers[0]  # generation 1 is ready; only the held worker takes the recreate
        workers.append(asyncio.create_task(held.run(stops[1])))
        await client.recreate(sandbox_id, wait=False)
        async with asyncio.timeout(60):
            await hold.held.wait()
        stops[1].set()  # the held worker fetches nothing more
        workers.append(asyncio.create_task(other.run(stops[2])))
        async with asyncio.timeout(120):
            while (await event_types(client, sandbox_id)).count("ready") < 2:
                await asyncio.sleep(0.1)
        running = _project_containers(docker_engine, project)
        assert len(running) == 2  # generation 2's stack, which the log's ready names
        hold.go.set()
        async with asyncio.timeout(120):
            await workers[1]  # the held worker goes on, and ends
        state = (await store.load(sandbox_id)).state
        assert (state.status, state.generation, state.attempt) == ("ready", 2, 2)
        assert _project_containers(docker_engine, project) == running  # the ready's own
        marker = Path(hosts[0].host.workspace_root) / f"sbx-{sandbox_id}.json"
        assert json.loads(marker.read_text())["made_by"] == [2, 2]
        found = await ComposeSshExtension(settings).list_sandboxes()
        assert [(item.sandbox_id, item.alive, item.made_by) for item in found] == [
            (sandbox_id, True, (2, 2))
        ]
        assert "failed" not in await event_types(client, sandbox_id)
    finally:
        hold.go.set()
        for stop in stops:
            stop.set()
        await asyncio.gather(*workers, return_exceptions=True)
        if sandbox_id is not None:
            await ComposeSshExtension(settings).teardown(sandbox_id, host="host1")
        await nc.drain()
        await client.close()
        await service.shutdown()


async def _vm_packer(
    home: Path, tmp_path: Path, ssh_hosts: SshHosts
) -> tuple[VmPackerExtension, ProvisionRequest, Path]:
    """ext.vm-packer on one loopback host; a request of generation 1 attempt 1, and the
    host's workspace root."""
    hosts = await ssh_hosts(1)
    write_hosts_file(home / "hosts.yaml", hosts)
    settings = Settings(home=home, nats_urls=(), nats_server=None, ack_wait=30.0)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README").write_text("the repo\n")
    request = ProvisionRequest(
        sandbox_id="fencedvm0001",
        profile=Catalog.load().profile("profile.vm-haskell-build"),
        inputs={"vm": "host1", "repo": str(repo)},
        host="host1",
    )
    return VmPackerExtension(settings), request, Path(hosts[0].host.workspace_root)


async def test_an_earlier_attempt_resumed_late_neither_starts_clean_nor_tears_down_a_later_one_s(
    home: Path, tmp_path: Path, ssh_hosts: SshHosts
) -> None:
    """Attempt 2 made the workspace; attempt 1, frozen meanwhile, goes on. Its create finds
    the sandbox there and must not start clean over it (it stops with an error), and its
    teardown must leave it: the log's `ready` names attempt 2's. Each step looks and acts
    under the sandbox's lock on the host, whose file goes with the sandbox."""
    extension, first, root = await _vm_packer(home, tmp_path, ssh_hosts)
    later = dataclasses.replace(first, attempt=2)
    await extension.provision(later)
    await extension.wait_ready(later)
    workspace = root / "sbx-fencedvm0001"
    (workspace / "work").write_text("attempt 2's\n")
    with pytest.raises(ExtensionError, match="a later provisioning"):
        await extension.provision(first)
    await extension.teardown_attempt(first.sandbox_id, first.made_by, host="host1")
    assert (workspace / "work").read_text() == "attempt 2's\n"
    marker = json.loads((root / "sbx-fencedvm0001.json").read_text())
    assert marker["made_by"] == [1, 2]
    found = await extension.list_sandboxes()
    assert [(f.sandbox_id, f.alive, f.made_by) for f in found] == [("fencedvm0001", True, (1, 2))]
    await extension.teardown_attempt(later.sandbox_id, later.made_by, host="host1")
    assert list(await extension.list_sandboxes()) == []
    assert sorted(p.name for p in root.iterdir()) == []  # the lock file went with it


async def test_an_earlier_teardown_raced_against_a_later_provision_leaves_the_later_one(
    home: Path, tmp_path: Path, ssh_hosts: SshHosts
) -> None:
    """Attempt 1's teardown (a worker resumed late) runs at the moment attempt 2's create
    makes the sandbox, many times: whatever the interleaving, attempt 2's workspace and
    marker are whole at the end. Without the lock, the teardown could read the host before
    the claim wrote its marker and remove what the claim made after."""
    extension, first, root = await _vm_packer(home, tmp_path, ssh_hosts)
    later = dataclasses.replace(first, attempt=2)
    for _ in range(8):
        await extension.provision(first)
        await asyncio.gather(
            extension.provision(later),
            extension.teardown_attempt(first.sandbox_id, first.made_by, host="host1"),
        )
        marker = json.loads((root / "sbx-fencedvm0001.json").read_text())
        assert marker["made_by"] == [1, 2]
        assert (root / "sbx-fencedvm0001" / "README").read_text() == "the repo\n"
        await extension.teardown(later.sandbox_id, host="host1")
    assert sorted(p.name for p in root.iterdir()) == []


class HeldAfterClaim:
    """Holds the create of provisioning ``made_by`` right after its claim (the marker written,
    the workspace made, the lock let go) until ``go``, as a worker frozen (SIGSTOP) or cut off
    from NATS there is: the rest of its make (the repo's copy, the setup steps) comes after."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, made_by: tuple[int, int], backend: ModuleType
    ) -> None:
        self.held = asyncio.Event()
        self.go = asyncio.Event()
        real = backend.claim

        async def held(*args: Any, **kwargs: Any) -> Claim:
            done = await real(*args, **kwargs)
            if kwargs.get("made_by") == made_by:
                self.held.set()
                await self.go.wait()
            return done

        monkeypatch.setattr(backend, "claim", held)


async def test_an_earlier_attempt_resumed_after_its_claim_leaves_the_later_one_s_live_workspace(
    home: Path, tmp_path: Path, ssh_hosts: SshHosts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attempt 1 claims the sandbox and is frozen; attempt 2 takes over (its long way removes
    attempt 1's), is ready, and the user works in the workspace. Attempt 1 goes on: it must
    stop before its copy of the repo or its setup touches the workspace, or the user's edit of
    README is overwritten and the setup runs again there (as they were when the rest of the
    make ran without the lock or a look at the marker)."""
    extension, first, root = await _vm_packer(home, tmp_path, ssh_hosts)
    profile = first.profile
    setup = profile.setup.model_copy(update={"instructions": ["echo setup >> setup.log"]})
    first = dataclasses.replace(first, profile=profile.model_copy(update={"setup": setup}))
    later = dataclasses.replace(first, attempt=2)
    hold = HeldAfterClaim(monkeypatch, first.made_by, vm_packer_backend)
    frozen = asyncio.create_task(extension.provision(first))
    try:
        async with asyncio.timeout(60):
            await hold.held.wait()
        await extension.provision(later)
        await extension.wait_ready(later)
        workspace = root / "sbx-fencedvm0001"
        assert (workspace / "setup.log").read_text() == "setup\n"
        (workspace / "README").write_text("the user's edit\n")
        (workspace / "work").write_text("the user's work\n")
        hold.go.set()
        with pytest.raises(ExtensionError, match="a later provisioning"):
            await frozen
        assert (workspace / "README").read_text() == "the user's edit\n"
        assert (workspace / "work").read_text() == "the user's work\n"
        assert (workspace / "setup.log").read_text() == "setup\n"  # not run again
        marker = json.loads((root / "sbx-fencedvm0001.json").read_text())
        assert marker["made_by"] == [1, 2]
    finally:
        hold.go.set()
        await asyncio.gather(frozen, return_exceptions=True)
        await extension.teardown(later.sandbox_id, host="host1")
    assert sorted(p.name for p in root.iterdir()) == []


async def test_a_host_whose_shell_startup_prints_still_takes_the_lock(
    home: Path, tmp_path: Path, ssh_hosts: SshHosts
) -> None:
    """A host whose login shell prints a line before every command (an echo in ~/.bashrc):
    the lock's answer comes after it, and a teardown still takes the lock and removes the
    sandbox (it failed with "taking the lock ... failed" when the first line had to be the
    answer)."""
    extension, request, root = await _vm_packer(home, tmp_path, ssh_hosts)
    await extension.provision(request)
    server = ssh_hosts.servers[0]
    (server.session_home / ".bashrc").write_text("echo 'welcome to host1'\n")
    probe = await extension.list_host("host1")  # the shell prints: the listing still reads
    assert [item.sandbox_id for item in probe] == ["fencedvm0001"]
    await extension.teardown_attempt(request.sandbox_id, request.made_by, host="host1")
    assert sorted(p.name for p in root.iterdir()) == []


async def test_a_compose_attempt_resumed_after_its_claim_leaves_the_later_one_s_live_stack(
    home: Path,
    tmp_path: Path,
    ssh_hosts: SshHosts,
    docker_engine: DockerEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same on ext.compose-ssh: attempt 1 is held right after its claim, attempt 2 takes
    over and is ready, the user edits a file of the stack's directory. Attempt 1 goes on and
    must stop before its copy of the repo (which overwrote the edit on the old code) and its
    `up`: the edit stays and so do attempt 2's containers."""
    hosts = await ssh_hosts(1, env=docker_engine.env, compose_cmd=docker_engine.compose_cmd)
    write_hosts_file(home / "hosts.yaml", hosts)
    (home / "profiles").mkdir(exist_ok=True)
    (home / "profiles" / "profile.fenced-compose.yaml").write_text(PROFILE)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "docker-compose.yml").write_text(TWO_SERVICE_COMPOSE)
    (repo / "notes.txt").write_text("the repo's notes\n")
    settings = Settings(home=home, nats_urls=(), nats_server=None, ack_wait=30.0)
    extension = ComposeSshExtension(settings)
    first = ProvisionRequest(
        sandbox_id="fencedcmp001",
        profile=Catalog.load(home).profile("profile.fenced-compose"),
        inputs={"repo": str(repo)},
        host="host1",
    )
    later = dataclasses.replace(first, attempt=2)
    hold = HeldAfterClaim(monkeypatch, first.made_by, compose_ssh_backend)
    frozen = asyncio.create_task(extension.provision(first))
    root = Path(hosts[0].host.workspace_root)
    try:
        async with asyncio.timeout(60):
            await hold.held.wait()
        await extension.provision(later)
        ready = await extension.wait_ready(later)
        running = _project_containers(docker_engine, ready.descriptor["compose_project"])
        assert len(running) == 2
        directory = root / "sbx-fencedcmp001"
        (directory / "notes.txt").write_text("the user's notes\n")
        hold.go.set()
        with pytest.raises(ExtensionError, match="a later provisioning"):
            await frozen
        assert (directory / "notes.txt").read_text() == "the user's notes\n"
        assert _project_containers(docker_engine, ready.descriptor["compose_project"]) == running
        marker = json.loads((root / "sbx-fencedcmp001.json").read_text())
        assert marker["made_by"] == [1, 2]
    finally:
        hold.go.set()
        await asyncio.gather(frozen, return_exceptions=True)
        await extension.teardown(later.sandbox_id, host="host1")
