"""ext.compose-ssh called directly, against real sshd hosts on loopback and real engines.

The "remote" host is this machine, so what a sandbox leaves behind is
checked on the local filesystem and with the engine's own CLI. The fixtures
``ssh_hosts`` and ``compose_engine`` come from tests/integration/remote_fixtures.py
(registered for every suite by tests/conftest.py). The lifecycle, exec and
drift tests run on both engines (dockerd with docker-compose, podman with
podman-compose); the others on docker.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandboxer.config.catalog import Catalog
from sandboxer.config.profile import Profile
from sandboxer.config.settings import Settings
from sandboxer.errors import (
    ExtensionError,
    HostUnreachable,
    InvalidInput,
    SandboxNotFound,
)
from sandboxer.extensions.base import FoundSandbox, ProvisionRequest
from sandboxer.extensions.compose_ssh.backend import ComposeSshExtension
from tests.integration.remote_fixtures import (
    ENGINES,
    ComposeEngine,
    DockerEngine,
    SshHostInfo,
    SshHosts,
    write_hosts_file,
)
from tests.ports import closed_port

pytestmark = pytest.mark.integration

both_engines = pytest.mark.parametrize("compose_engine", ENGINES, indirect=True)

SECRET = "s3cr3t-Value_42"

COMPOSE = """\
services:
  web:
    image: localhost/mini:latest
    command: ["sleep", "3600"]
    network_mode: none
    init: true
  worker:
    image: localhost/mini:latest
    command: ["sleep", "3600"]
    network_mode: none
    init: true
    environment:
      API_TOKEN: ${API_TOKEN:-unset}
"""

# The tag interpolates the secret, so compose's error output repeats it.
BROKEN = """\
services:
  web:
    image: localhost/nope:1-${API_TOKEN:-x}
    command: ["sleep", "3600"]
    network_mode: none
"""

CRASHING = """\
services:
  web:
    image: localhost/mini:latest
    command: ["sleep", "3600"]
    network_mode: none
    init: true
  crash:
    image: localhost/mini:latest
    command: ["sh", "-c", "echo boom-before-exit; exit 4"]
    network_mode: none
"""


@dataclass
class Env:
    extension: ComposeSshExtension
    host: SshHostInfo
    engine: ComposeEngine
    profile: Profile

    @property
    def root(self) -> Path:
        return Path(self.host.host.workspace_root)

    def own_id(self, name: str) -> str:
        """``name`` made this engine's own. What an egress allowlist makes is the machine's
        (its nft table, its proxy found by name, its gate directory), and the [docker] and
        [podman] runs of one test may run at once in two workers: under one id, one's
        start stopped the other's proxy."""
        return name + self.engine.name[0]

    def request(
        self,
        sandbox_id: str,
        repo: Path | str,
        *,
        host: str | None = "host1",
        secrets: dict[str, str] | None = None,
        **inputs: str,
    ) -> ProvisionRequest:
        return ProvisionRequest(
            sandbox_id=sandbox_id,
            profile=self.profile,
            inputs={"repo": str(repo), **inputs},
            secrets=secrets or {},
            host=host,
        )

    def containers(self, sandbox_id: str) -> list[str]:
        out = self.engine.cli(
            "ps",
            "-a",
            "--filter",
            f"label=com.docker.compose.project=sbx-{sandbox_id}",
            "--format",
            "{{.Names}}",
        ).stdout
        return sorted(out.split())

    async def found(self) -> dict[str, FoundSandbox]:
        return {f.sandbox_id: f for f in await self.extension.list_sandboxes()}


def make_repo(directory: Path, compose: str = COMPOSE, name: str = "e2e/compose.yml") -> Path:
    (directory / name).parent.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(compose)
    (directory / "README").write_text("the repo\n")
    return directory


def settings_for(home: Path) -> Settings:
    return Settings(home=home, nats_urls=(), nats_server=None, ack_wait=30.0)


@pytest.fixture
async def env(
    ssh_hosts: SshHosts,
    compose_engine: ComposeEngine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Env]:
    monkeypatch.delenv("SANDBOXER_HOSTS", raising=False)
    [host] = await ssh_hosts(1, env=compose_engine.env, compose_cmd=compose_engine.compose_cmd)
    home = tmp_path / "home"
    write_hosts_file(home / "hosts.yaml", [host])
    extension = ComposeSshExtension.from_settings(settings_for(home))
    env = Env(extension, host, compose_engine, Catalog.load().profile("profile.compose-e2e"))
    try:
        yield env
    finally:
        for found in await extension.list_sandboxes():
            await extension.teardown(found.sandbox_id, host=found.host)


async def collect_exec(
    extension: ComposeSshExtension, sandbox_id: str, argv: list[str], service: str | None = None
) -> tuple[int, dict[str, bytes]]:
    out: dict[str, bytes] = {"stdout": b"", "stderr": b""}

    async def sink(stream: str, data: bytes) -> None:
        out[stream] += data

    code = await extension.exec(sandbox_id, argv, sink, host="host1", service=service)
    return code, out


@both_engines
async def test_full_lifecycle(env: Env, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    request = env.request("composelife01", repo, secrets={"API_TOKEN": SECRET})
    began = time.monotonic()
    await env.extension.provision(request)
    provisioned = time.monotonic()
    readiness = await env.extension.wait_ready(request)
    ready = time.monotonic()

    directory = env.root / "sbx-composelife01"
    descriptor = readiness.descriptor
    assert descriptor["kind"] == "compose-ssh"
    assert descriptor["host"] == "host1"
    assert descriptor["address"] == "127.0.0.1"
    assert descriptor["port"] == env.host.port
    assert descriptor["user"] == env.host.host.user
    assert descriptor["directory"] == str(directory)
    assert descriptor["compose_project"] == "sbx-composelife01"
    assert descriptor["compose_file"] == str(directory / "e2e/compose.yml")
    assert descriptor["services"] == ["web", "worker"]
    assert SECRET not in json.dumps(descriptor)
    assert SECRET not in json.dumps(readiness.warnings)
    assert len(env.containers("composelife01")) == 2
    assert (directory / "README").read_text() == "the repo\n"

    # Beside the directory, not in it: a service that mounts the directory (`.:/app` is
    # common) could write into it, and the host's shell sources the file.
    secrets_file = env.root / "sbx-composelife01.env"
    assert secrets_file.stat().st_mode & 0o777 == 0o600
    assert descriptor["secrets_file"] == str(secrets_file)
    assert not (directory / ".sandboxer.env").exists()
    pwned = tmp_path / "pwned"
    (directory / ".sandboxer.env").write_text(f"touch {pwned}\n")  # as such a service could
    worker = next(n for n in env.containers("composelife01") if "worker" in n)
    delivered = env.engine.cli("exec", worker, "/bin/sh", "-c", "echo $API_TOKEN").stdout.strip()
    assert delivered == SECRET  # interpolated from the secrets, never on a command line

    found = {f.sandbox_id: f for f in await env.extension.list_sandboxes()}
    assert found["composelife01"].alive
    assert found["composelife01"].host == "host1"
    assert found["composelife01"].detail["services"] == ["web", "worker"]

    # exec runs inside a service's container: the first service unless one is named.
    script = 'printf "%s|" "${API_TOKEN:-none}"; test -e /e2e && echo host || echo container'
    code, out = await collect_exec(
        env.extension, "composelife01", ["sh", "-c", f"{script}; echo oops >&2; exit 3"]
    )
    assert code == 3
    assert out["stdout"] == b"none|container\n"  # web has no API_TOKEN
    assert out["stderr"] == b"oops\n"
    code, out = await collect_exec(
        env.extension, "composelife01", ["sh", "-c", script], service="worker"
    )
    assert (code, out["stdout"]) == (0, f"{SECRET}|container\n".encode())
    with pytest.raises(InvalidInput, match="no service 'nope'; its services are web, worker"):
        await collect_exec(env.extension, "composelife01", ["true"], service="nope")
    with pytest.raises(InvalidInput, match="not a compose service name"):
        await collect_exec(env.extension, "composelife01", ["true"], service="$(reboot)")
    assert not pwned.exists()  # the compose commands on the host never read the planted file

    report = await env.extension.inspect_host("host1")
    assert report["reachable"] is True
    assert report["memory_total_mb"] > 0
    assert report["disk_total_mb"] > 0
    assert "load1" in report
    assert report["engine"] == env.engine.name
    assert report["sandboxes"] == ["composelife01"]
    assert report["workspaces"] == ["composelife01"]
    assert report["compose_projects"] == [
        {
            "project": "sbx-composelife01",
            "sandbox_id": "composelife01",
            "containers": 2,
            "running": 2,
        }
    ]
    assert len(report["containers"]) == 2

    tearing_down = time.monotonic()
    await env.extension.teardown("composelife01", host="host1")
    torn_down = time.monotonic()
    assert env.containers("composelife01") == []
    assert not directory.exists()
    assert not (env.root / "sbx-composelife01.json").exists()
    assert not secrets_file.exists()
    assert not pwned.exists()
    assert await env.extension.list_sandboxes() == []
    await env.extension.teardown("composelife01", host="host1")  # twice is fine
    await env.extension.teardown("composelife01")  # and without a host
    logging.getLogger(__name__).warning(
        "compose-ssh timings on %s: provision %.2fs, ready %.2fs, teardown %.2fs",
        env.engine.name,
        provisioned - began,
        ready - provisioned,
        torn_down - tearing_down,
    )


async def test_failing_compose_file_reports_output_redacted_and_leaves_nothing(
    env: Env, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", BROKEN, name="docker-compose.yml")
    request = env.request("composefail01", repo, secrets={"API_TOKEN": SECRET})
    with pytest.raises(ExtensionError) as caught:
        await env.extension.provision(request)
    message = caught.value.message
    assert "up -d" in message
    assert "localhost/nope" in message  # the tail of compose's own output
    assert "[redacted]" in message  # the secret was in it, interpolated into the tag
    assert SECRET not in message
    assert SECRET not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__  # the unredacted original does not travel along
    await env.extension.teardown("composefail01", host="host1")
    assert env.containers("composefail01") == []
    assert not (env.root / "sbx-composefail01").exists()
    assert not (env.root / "sbx-composefail01.json").exists()


async def test_a_service_that_exits_fails_wait_ready_with_its_log(env: Env, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", CRASHING, name="compose.yaml")
    request = env.request("composecrash1", repo)
    await env.extension.provision(request)
    with pytest.raises(ExtensionError) as caught:
        await env.extension.wait_ready(request)
    assert "crash (exited, exit code 4)" in caught.value.message
    assert "boom-before-exit" in caught.value.message
    await env.extension.teardown("composecrash1", host="host1")
    assert env.containers("composecrash1") == []


async def test_provision_again_starts_clean_and_compose_file_input(
    env: Env, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", name="stacks/e2e.yml")
    request = env.request("composeagain1", repo, compose_file="stacks/e2e.yml")
    await env.extension.provision(request)
    (env.root / "sbx-composeagain1" / "leftover").write_text("from the first attempt")
    await env.extension.provision(request)
    readiness = await env.extension.wait_ready(request)
    assert readiness.descriptor["compose_file"].endswith("/stacks/e2e.yml")
    assert not (env.root / "sbx-composeagain1" / "leftover").exists()
    assert not (env.root / "sbx-composeagain1.env").exists()  # no secrets
    assert len(env.containers("composeagain1")) == 2
    assert [f.sandbox_id for f in await env.extension.list_sandboxes()] == ["composeagain1"]


WITH_VOLUME = """\
services:
  web:
    image: localhost/mini:latest
    command: ["sleep", "3600"]
    network_mode: none
    init: true
    volumes: ["data:/data"]
volumes:
  data: {}
"""


@both_engines
async def test_teardown_goes_by_labels_not_by_a_compose_file_the_stack_rewrote(
    env: Env, tmp_path: Path
) -> None:
    """A service that mounts its directory can rewrite the compose file teardown used to run
    'down --volumes' on: it named another volume (removed by name) and no service of its
    own (its own volume left behind). Teardown now goes by the project's labels."""
    victim = "sbxtest-victim-volume"
    env.engine.cli("volume", "create", victim)
    try:
        repo = make_repo(tmp_path / "repo", WITH_VOLUME)
        await env.extension.provision(env.request("composelabels1", repo))
        compose = env.root / "sbx-composelabels1" / "e2e" / "compose.yml"
        compose.write_text(f"services: {{}}\nvolumes:\n  x:\n    name: {victim}\n")
        await env.extension.teardown("composelabels1", host="host1")
        names = env.engine.cli("volume", "ls", "--format", "{{.Name}}").stdout.split()
        assert victim in names
        own = env.engine.cli(
            "volume", "ls", "-q", "--filter", "label=com.docker.compose.project=sbx-composelabels1"
        ).stdout.split()
        assert own == []
    finally:
        env.engine.cli("volume", "rm", "-f", victim)


async def test_teardown_of_what_never_existed_succeeds(env: Env) -> None:
    await env.extension.teardown("neverexisted", host="host1")
    await env.extension.teardown("neverexisted")
    with pytest.raises(SandboxNotFound):
        await env.extension.exec("neverexisted", ["true"], _discard, host="host1")


async def test_containers_without_their_directory_are_found_and_removed(
    env: Env, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo")
    request = env.request("composeorph01", repo)
    await env.extension.provision(request)
    # Someone deleted the directory and the marker by hand: the containers leak.
    shutil.rmtree(env.root / "sbx-composeorph01")
    (env.root / "sbx-composeorph01.json").unlink()
    found = {f.sandbox_id: f for f in await env.extension.list_sandboxes()}
    assert not found["composeorph01"].alive
    assert found["composeorph01"].detail["containers"] == 2
    await env.extension.teardown("composeorph01", host="host1")
    assert env.containers("composeorph01") == []
    assert await env.extension.list_sandboxes() == []


@both_engines
@pytest.mark.parametrize("how", ["removed", "exited"])
async def test_a_stack_whose_containers_are_gone_is_a_corpse(
    env: Env, tmp_path: Path, how: str
) -> None:
    repo = make_repo(tmp_path / "repo")
    sandbox_id = f"composedead{how[0]}"
    request = env.request(sandbox_id, repo)
    await env.extension.provision(request)
    await env.extension.wait_ready(request)
    names = env.containers(sandbox_id)
    if how == "removed":  # by hand, behind sandboxer's back
        env.engine.cli("rm", "-f", *names)
    else:
        env.engine.cli("stop", "-t", "0", *names)
    found = (await env.found())[sandbox_id]
    assert not found.alive
    assert found.detail["running"] == 0
    assert found.detail["directory"] == str(env.root / f"sbx-{sandbox_id}")
    dead = found.detail["dead"]
    assert dead.startswith(
        "no container of its compose project" if how == "exited" else "its compose project"
    )
    await env.extension.teardown(sandbox_id, host="host1")
    assert env.containers(sandbox_id) == []
    assert not (env.root / f"sbx-{sandbox_id}").exists()
    assert await env.extension.list_sandboxes() == []


async def test_a_stack_with_one_container_left_running_is_alive(env: Env, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    request = env.request("composehalf1", repo)
    await env.extension.provision(request)
    await env.extension.wait_ready(request)
    env.engine.cli("rm", "-f", next(n for n in env.containers("composehalf1") if "worker" in n))
    found = (await env.found())["composehalf1"]
    assert found.alive  # degraded, but someone may still be using it: not for reaping
    assert (found.detail["containers"], found.detail["running"]) == (1, 1)


async def test_another_backends_workspace_is_left_alone(env: Env) -> None:
    (env.root / "sbx-vmworkspace1").mkdir(parents=True)
    (env.root / "sbx-vmworkspace1.json").write_text('{"extension": "ext.vm-packer"}\n')
    assert await env.extension.list_sandboxes() == []
    await env.extension.teardown("vmworkspace1", host="host1")
    assert (env.root / "sbx-vmworkspace1").is_dir()


@pytest.fixture
async def unreachable(ssh_hosts: SshHosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    """An extension whose only host is a closed port: any connection attempt fails."""
    monkeypatch.delenv("SANDBOXER_HOSTS", raising=False)
    [host] = await ssh_hosts(1)
    await host.server.stop()
    home = tmp_path / "home"
    write_hosts_file(home / "hosts.yaml", [host], port=closed_port())
    extension = ComposeSshExtension(settings_for(home))
    profile = Catalog.load().profile("profile.compose-e2e")
    return Env(extension, host, None, profile)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sandbox_id", "inputs", "secrets"),
    [
        ("../x", {}, {}),
        ("$(reboot)", {}, {}),
        ("a;rm -rf /", {}, {}),
        ("UPPERCASE1", {}, {}),
        ("hostile0001", {"compose_file": "../../etc/passwd"}, {}),
        ("hostile0002", {"compose_file": "/etc/passwd"}, {}),
        ("hostile0003", {"compose_file": "$(reboot).yml"}, {}),
        ("hostile0004", {"compose_file": "e2e/../../x.yml"}, {}),
        ("hostile0005", {"compose_file": "missing.yml"}, {}),
        ("hostile0006", {"repo": "$(reboot)"}, {}),
        ("hostile0007", {"repo": ""}, {}),
        ("hostile0008", {}, {"BAD NAME": "x"}),
        ("hostile0009", {}, {"PATH": "x"}),
        ("hostile0010", {}, {"DOCKER_HOST": "x"}),
    ],
)
async def test_hostile_ids_and_inputs_are_refused_before_any_connection(
    unreachable: Env,
    tmp_path: Path,
    sandbox_id: str,
    inputs: dict[str, str],
    secrets: dict[str, str],
) -> None:
    env = unreachable
    repo = make_repo(tmp_path / "repo")
    inputs = dict(inputs)
    request = env.request(sandbox_id, inputs.pop("repo", str(repo)), secrets=secrets, **inputs)
    with pytest.raises(InvalidInput):
        await env.extension.provision(request)
    with pytest.raises(InvalidInput):
        await env.extension.wait_ready(request)
    # A well-formed request does try the host, proving the refusal came first:
    with pytest.raises(HostUnreachable):
        await env.extension.provision(env.request("wellformed01", repo))


async def test_hostile_ids_are_refused_by_teardown_and_exec(unreachable: Env) -> None:
    extension = unreachable.extension
    for bad in ("../x", "$(reboot)", "sbx-../../etc"):
        with pytest.raises(InvalidInput):
            await extension.teardown(bad, host="host1")
        with pytest.raises(InvalidInput):
            await extension.exec(bad, ["true"], _discard, host="host1")
    with pytest.raises(InvalidInput):
        await extension.exec("wellformed01", [], _discard, host="host1")
    with pytest.raises(HostUnreachable):
        await extension.teardown("wellformed01", host="host1")
    assert await extension.list_sandboxes() == []  # the unreachable host is skipped


async def test_a_host_whose_engine_does_not_answer_keeps_its_stacks_alive(
    ssh_hosts: SshHosts,
    docker_engine: DockerEngine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The engine restarting or overloaded says nothing of the stacks: a listing that took
    them for dead had every worker's reconcile (and reap-stale) tear them down."""
    monkeypatch.delenv("SANDBOXER_HOSTS", raising=False)
    [host] = await ssh_hosts(1, env=docker_engine.env)
    write_hosts_file(tmp_path / "home" / "hosts.yaml", [host])
    extension = ComposeSshExtension(settings_for(tmp_path / "home"))
    # The same host, seen through an engine that does not answer.
    blind_engine = {"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    write_hosts_file(tmp_path / "blind" / "hosts.yaml", [host], env=blind_engine)
    blind = ComposeSshExtension(settings_for(tmp_path / "blind"))
    request = ProvisionRequest(
        sandbox_id="composeblind1",
        profile=Catalog.load().profile("profile.compose-e2e"),
        inputs={"repo": str(make_repo(tmp_path / "repo"))},
        host="host1",
    )
    try:
        await extension.provision(request)
        await extension.wait_ready(request)
        [found] = await blind.list_sandboxes()
        assert (found.sandbox_id, found.alive) == ("composeblind1", True)
        assert "engine_error" in found.detail
        assert "dead" not in found.detail
    finally:
        await extension.teardown("composeblind1", host="host1")


async def test_unreachable_hosts_are_skipped_when_listing(
    ssh_hosts: SshHosts,
    docker_engine: DockerEngine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.delenv("SANDBOXER_HOSTS", raising=False)
    host1, host2 = await ssh_hosts(2, env=docker_engine.env)
    home = tmp_path / "home"
    write_hosts_file(home / "hosts.yaml", [host1, host2])
    extension = ComposeSshExtension(settings_for(home))
    profile = Catalog.load().profile("profile.compose-e2e")
    request = ProvisionRequest(
        sandbox_id="composeskip01",
        profile=profile,
        inputs={"repo": str(make_repo(tmp_path / "repo"))},
        host="host2",
    )
    try:
        await extension.provision(request)
        await extension.wait_ready(request)
        await host1.server.stop()
        found = await extension.list_sandboxes()
        assert [(f.sandbox_id, f.host, f.alive) for f in found] == [
            ("composeskip01", "host2", True)
        ]
        assert "skipping host host1" in caplog.text
        with pytest.raises(HostUnreachable):
            await extension.inspect_host("host1")
        assert (await extension.inspect_host("host2"))["sandboxes"] == ["composeskip01"]
    finally:
        await extension.teardown("composeskip01", host="host2")
    assert not (Path(host2.host.workspace_root) / "sbx-composeskip01").exists()


async def _discard(_stream: str, _data: bytes) -> None:
    return None


@both_engines
async def test_pause_freezes_every_container_and_resume_thaws_them(
    env: Env, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo")
    request = env.request("composepause01", repo)
    await env.extension.provision(request)
    await env.extension.wait_ready(request)

    def states() -> set[str]:
        names = env.containers("composepause01")
        out = env.engine.cli("inspect", "--format", "{{.State.Status}}", *names).stdout
        return set(out.split())

    began = time.monotonic()
    await env.extension.pause("composepause01", host="host1")
    paused = time.monotonic()
    assert states() == {"paused"}
    await env.extension.pause("composepause01", host="host1")  # a redelivered job: no error
    found = (await env.found())["composepause01"]
    assert (found.alive, found.frozen) == (True, "all")  # frozen, not a corpse to reap
    await env.extension.resume("composepause01", host="host1")
    resumed = time.monotonic()
    assert states() == {"running"}
    assert (await env.found())["composepause01"].frozen == "none"

    # A pause cut short between containers is listed as such, and a worker's reconcile
    # (drift.reconcile_step: freeze or thaw) finishes either way from there.
    first = env.containers("composepause01")[0]
    env.engine.cli("pause", first)
    assert (await env.found())["composepause01"].frozen == "part"
    await env.extension.resume("composepause01", host="host1")
    assert states() == {"running"}
    env.engine.cli("pause", first)
    await env.extension.pause("composepause01", host="host1")
    assert states() == {"paused"}
    await env.extension.resume("composepause01", host="host1")
    code, out = await collect_exec(env.extension, "composepause01", ["echo", "carried on"])
    assert (code, out["stdout"]) == (0, b"carried on\n")
    logging.getLogger(__name__).warning(
        "%s: pause %.0f ms, resume %.0f ms",
        env.engine.name,
        (paused - began) * 1000,
        (resumed - paused) * 1000,
    )

    # A paused stack is torn down like any other.
    await env.extension.pause("composepause01", host="host1")
    await env.extension.teardown("composepause01", host="host1")
    assert env.containers("composepause01") == []
    assert not (env.root / "sbx-composepause01").exists()


async def test_pause_of_a_stack_that_is_gone_says_so(env: Env) -> None:
    with pytest.raises(SandboxNotFound, match="no compose project recorded"):
        await env.extension.pause("composegone01", host="host1")
