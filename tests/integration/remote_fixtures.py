"""Real remote hosts for tests: OpenSSH servers on loopback and a private Docker engine.

``tests/conftest.py`` registers this module as a plugin (``pytest_plugins``),
so every suite can ask for ``ssh_hosts`` and ``docker_engine`` by name. The
functions are named ``*_fixture`` so that a module may also import them
(``# noqa: F401``) without a test's ``ssh_hosts`` parameter shadowing the import.

``ssh_hosts`` (function scope) is an async factory: ``await ssh_hosts(2)``
starts two ``sshd`` processes on free loopback ports, each a "host" with its
own host key, all accepting one client key, and returns their
:class:`SshHostInfo`. ``stop()``/``start()`` on a host's ``server`` simulate
a host dying (its open sessions included) and coming back on the same port.

``docker_engine`` (session scope) is a private ``dockerd`` with no bridge,
no iptables and its own data, exec root and socket under
``/tmp/sbx-dockerd-*``, holding the image ``localhost/mini:latest`` (busybox)
built locally, since no registry is reachable. Every test module that
imports it shares the one engine.

``podman_engine`` (session scope) is podman with runc and its own storage and
configuration under ``/tmp/sbx-podman-*`` (chosen by ``CONTAINERS_CONF`` and
``CONTAINERS_STORAGE_CONF``, which its ``env`` carries to the hosts), with the
same image, driven by podman-compose.

``compose_engine`` is either of the two, as a :class:`ComposeEngine`:
``docker`` unless a test asks for both with
``@pytest.mark.parametrize("compose_engine", ENGINES, indirect=True)``.
``compose_hosts`` is two ``ssh_hosts`` (host1, host2) whose commands reach it.

``write_remote_home`` gives a service home its profiles and the hosts file;
``make_repo`` makes a project to create a sandbox from.

Recipes and timings: /work/shared/TESTBEDS.md. A missing tool fails the test
with the apt command to install it.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import pytest
import yaml

from sandboxer.config.hosts import HostConfig
from tests.conftest import require_tool
from tests.ports import closed_port

__all__ = [
    "ENGINES",
    "MINI_IMAGE",
    "ComposeEngine",
    "DockerEngine",
    "PodmanEngine",
    "SshHostInfo",
    "SshHosts",
    "SshServer",
    "compose_engine_fixture",
    "compose_hosts_fixture",
    "docker_engine_fixture",
    "make_repo",
    "podman_engine_fixture",
    "ssh_hosts_fixture",
    "write_hosts_file",
    "write_remote_home",
]

MINI_IMAGE = "localhost/mini:latest"
SSHD_READY_TIMEOUT = 10.0
DOCKERD_READY_TIMEOUT = 60.0


# --------------------------------------------------------------------------- sshd


def _keygen(path: Path) -> str:
    """A fresh ed25519 key pair at ``path``; returns the public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_suffix(".pub").read_text().strip()


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (sshd's per-connection children call setsid,
    so a process-group kill would miss them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class _PortTaken(Exception):
    pass


class SshServer:
    """One ``sshd -D`` on 127.0.0.1: a stand-in for a remote host."""

    def __init__(self, directory: Path, *, sshd: str, authorized_keys: Path) -> None:
        self.directory = directory
        self.sshd = sshd
        self.authorized_keys = authorized_keys
        self.host_key = directory / "host_key"
        self.config = directory / "sshd_config"
        self.log = directory / "sshd.log"
        self.session_home = directory / "home"
        self.session_home.mkdir(parents=True)
        self.host_public_key = _keygen(self.host_key)
        self.port = 0
        self._choose_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.started_once = False

    def _choose_port(self) -> None:
        self.port = closed_port()
        self.config.write_text(
            f"Port {self.port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {self.host_key}\n"
            f"PidFile {self.directory / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {self.authorized_keys}\n"
            "PermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "PrintMotd no\n"
            "Subsystem sftp internal-sftp\n"
            # A home of its own, empty: a session's bash does not source root's ~/.bashrc.
            # This machine's runs `pyenv init`, whose rehash takes a lock file that a session
            # killed mid-rehash (sshd stopped mid-provisioning) leaves behind, and every later
            # session then waited 60 s for it.
            f"SetEnv HOME={self.session_home}\n"
        )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def start(self) -> None:
        """Start sshd (again, on the same port) and wait until it greets.

        The first start moves to another free port if some other process took
        the chosen one in the meantime; a restart keeps its port, like a host.
        """
        if self.running:
            return
        for _ in range(3 if not self.started_once else 1):
            try:
                await self._start()
            except _PortTaken:
                self._choose_port()
                continue
            self.started_once = True
            return
        raise RuntimeError(f"sshd found no free port:\n{self._log_tail()}")

    async def _start(self) -> None:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation dir
        self.process = subprocess.Popen(
            [self.sshd, "-D", "-f", str(self.config), "-E", str(self.log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + SSHD_READY_TIMEOUT
        while True:
            if self.process.poll() is not None:
                self.process = None
                if not self.started_once and "Address already in use" in self._log_tail():
                    raise _PortTaken
                raise RuntimeError(f"sshd on port {self.port} exited at start:\n{self._log_tail()}")
            with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                try:
                    banner = await asyncio.wait_for(reader.readline(), 2)
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
                if banner.startswith(b"SSH-"):
                    return
            if time.monotonic() > deadline:
                await self.stop()
                raise RuntimeError(f"sshd on port {self.port} never answered:\n{self._log_tail()}")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Kill sshd and every session it serves, as if the host died."""
        process, self.process = self.process, None
        if process is None:
            return
        for pid in _descendants(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        while process.poll() is None:
            await asyncio.sleep(0.01)

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text().splitlines()[-20:])
        return "(no log)"


@dataclass
class SshHostInfo:
    """A running loopback host and what a client needs to reach it."""

    name: str
    port: int
    key_file: Path
    known_hosts: Path
    host_public_key: str
    host: HostConfig
    server: SshServer

    @property
    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_public_key}"


@dataclass
class SshHosts:
    """The ``ssh_hosts`` factory: ``await ssh_hosts(count)`` starts that many hosts."""

    directory: Path
    sshd: str
    servers: list[SshServer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.client_key = self.directory / "client_key"
        self.authorized_keys = self.directory / "authorized_keys"
        self.authorized_keys.write_text(_keygen(self.client_key) + "\n")

    async def __call__(self, count: int = 2, **host_fields: Any) -> list[SshHostInfo]:
        """Start ``count`` more hosts (named host1, host2, ...); ``host_fields`` go into
        each :class:`HostConfig` (e.g. ``env``, ``compose_cmd``)."""
        infos = []
        for _ in range(count):
            name = f"host{len(self.servers) + 1}"
            directory = self.directory / name
            server = SshServer(directory, sshd=self.sshd, authorized_keys=self.authorized_keys)
            self.servers.append(server)
            await server.start()
            known_hosts = directory / "known_hosts"
            known_hosts.write_text(f"[127.0.0.1]:{server.port} {server.host_public_key}\n")
            fields: dict[str, Any] = {
                "address": "127.0.0.1",
                "port": server.port,
                "user": getpass.getuser(),
                "key_file": str(self.client_key),
                "known_hosts": str(known_hosts),
                "compose_cmd": "docker-compose",
                "workspace_root": str(directory / "workspaces"),
            }
            fields.update(host_fields)
            infos.append(
                SshHostInfo(
                    name=name,
                    port=server.port,
                    key_file=self.client_key,
                    known_hosts=known_hosts,
                    host_public_key=server.host_public_key,
                    host=HostConfig(**fields),
                    server=server,
                )
            )
        return infos

    async def close(self) -> None:
        for server in self.servers:
            await server.stop()


@pytest.fixture(name="ssh_hosts")
async def ssh_hosts_fixture(tmp_path: Path) -> AsyncIterator[SshHosts]:
    """Factory of real sshd "hosts" on loopback; every one is killed afterwards."""
    sshd = require_tool("sshd", "openssh-server")
    require_tool("ssh-keygen", "openssh-client")
    require_tool("ssh", "openssh-client")
    require_tool("rsync", "rsync")
    factory = SshHosts(tmp_path / "ssh", sshd)
    try:
        yield factory
    finally:
        await factory.close()


TWO_SERVICE_COMPOSE = """\
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
"""
"""A compose file of two busybox services that need no network: for every compose test."""


def make_repo(directory: Path, compose: str = TWO_SERVICE_COMPOSE) -> Path:
    """A project to create a sandbox from: ``compose`` as its docker-compose.yml, and a README
    that reads "the repo"."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "docker-compose.yml").write_text(compose)
    (directory / "README").write_text("the repo\n")
    return directory


def write_hosts_file(path: Path, hosts: list[SshHostInfo], **overrides: Any) -> Path:
    """Write a hosts.yaml (the DESIGN.md format) for ``hosts``.

    ``overrides`` apply to every host; a value of ``None`` drops that key
    (e.g. ``known_hosts=None, host_key="ssh-ed25519 ..."``).
    """
    entries = {}
    for info in hosts:
        entry = info.host.model_dump(mode="json", exclude_none=True)
        entry.update(overrides)
        entries[info.name] = {key: value for key, value in entry.items() if value is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"hosts": entries}, sort_keys=False))
    return path


def write_remote_home(
    home: Path, hosts: list[SshHostInfo], profiles: Mapping[str, str], **overrides: Any
) -> None:
    """Make ``home`` a service's over ``hosts``: each of ``profiles`` (id: YAML) in
    ``profiles/``, and ``hosts.yaml`` (``overrides`` as in :func:`write_hosts_file`)."""
    (home / "profiles").mkdir(exist_ok=True)
    for name, text in profiles.items():
        (home / "profiles" / f"{name}.yaml").write_text(text)
    write_hosts_file(home / "hosts.yaml", hosts, **overrides)


# --------------------------------------------------------------------------- dockerd


def _unmount_under(directory: Path) -> None:
    """Unmount whatever a crashed engine left mounted below ``directory``, deepest first."""
    prefix = str(directory) + "/"
    mounts = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            target = line.split()[1].replace("\\040", " ")
            if target.startswith(prefix) or target == str(directory):
                mounts.append(target)
    for target in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], check=False, capture_output=True)


def _build_mini_tar(directory: Path, busybox: str) -> Path:
    """A root filesystem of busybox and its applets, as a tar for ``docker import``."""
    rootfs = directory / "rootfs"
    for sub in ("bin", "etc", "tmp", "root"):
        (rootfs / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, rootfs / "bin" / "busybox")
    applets = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True)
    for applet in applets.stdout.split():
        if applet != "busybox":
            (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
    )
    (rootfs / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    tar = directory / "mini.tar"
    subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tar), "."], check=True)
    return tar


@dataclass
class DockerEngine:
    """A private dockerd; point clients at it with ``env`` or ``docker_host``."""

    directory: Path
    storage_driver: str
    process: subprocess.Popen[bytes]
    started_in: float

    @property
    def socket(self) -> Path:
        return self.directory / "docker.sock"

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    name: Literal["docker"] = "docker"
    compose_cmd: Literal["docker-compose"] = "docker-compose"

    @property
    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": self.docker_host}

    def cli(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return self.docker(*args, check=check, timeout=timeout)

    def docker(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this engine (blocking: for set-up and checks)."""
        return subprocess.run(
            ["docker", "-H", self.docker_host, *args],
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    @classmethod
    def start(cls) -> DockerEngine:
        dockerd = require_tool("dockerd", "docker.io")
        require_tool("docker", "docker.io")
        require_tool("docker-compose", "docker-compose")
        busybox = require_tool("busybox", "busybox-static")
        # Short path on purpose: containerd's sockets live under the exec root
        # and a unix socket path may not exceed 108 bytes.
        directory = Path(tempfile.mkdtemp(prefix="sbx-dockerd-", dir="/tmp"))
        failures = []
        for driver in ("overlay2", "vfs"):
            began = time.monotonic()
            outcome = cls._try_start(dockerd, directory, driver)
            if isinstance(outcome, subprocess.Popen):
                engine = cls(directory, driver, outcome, time.monotonic() - began)
                engine._import_mini(busybox)
                return engine
            failures.append(f"--storage-driver={driver}:\n{outcome}")
        shutil.rmtree(directory, ignore_errors=True)
        raise RuntimeError("dockerd did not start:\n" + "\n".join(failures))

    @staticmethod
    def _try_start(dockerd: str, directory: Path, driver: str) -> subprocess.Popen[bytes] | str:
        log = directory / f"dockerd-{driver}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    dockerd,
                    "--data-root",
                    str(directory / "root"),
                    "--exec-root",
                    str(directory / "exec"),
                    "--pidfile",
                    str(directory / "pid"),
                    "-H",
                    f"unix://{directory / 'docker.sock'}",
                    "--iptables=false",
                    "--ip6tables=false",
                    "--bridge=none",
                    "--ip-forward=false",
                    "--ip-masq=false",
                    f"--storage-driver={driver}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        deadline = time.monotonic() + DOCKERD_READY_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline:
            info = subprocess.run(
                [
                    "docker",
                    "-H",
                    f"unix://{directory / 'docker.sock'}",
                    "info",
                    "--format",
                    "{{.Driver}}",
                ],
                check=False,
                capture_output=True,
                text=True,
            )
            if info.returncode == 0:
                return process
            time.sleep(0.05)
        _stop_process(process)
        _unmount_under(directory)
        for sub in ("root", "exec"):
            shutil.rmtree(directory / sub, ignore_errors=True)
        return "\n".join(log.read_text(errors="replace").splitlines()[-15:])

    def _import_mini(self, busybox: str) -> None:
        tar = _build_mini_tar(self.directory / "mini", busybox)
        self.docker("import", str(tar), MINI_IMAGE)

    def stop(self) -> None:
        """Remove every container, stop dockerd (and its containerd), delete its data."""
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            ids = self.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False)
        _stop_process(self.process)
        _unmount_under(self.directory)
        shutil.rmtree(self.directory, ignore_errors=True)


def _stop_process(process: subprocess.Popen[bytes], grace: float = 20) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class ComposeEngine(Protocol):
    """A container engine and the compose command that drives it, as a host reaches them."""

    @property
    def name(self) -> Literal["docker", "podman"]:
        """The engine's CLI, as sandboxer derives it from the host's compose command."""

    @property
    def compose_cmd(self) -> Literal["docker-compose", "podman-compose"]:
        """What the hosts file says as ``compose_cmd``."""

    @property
    def env(self) -> dict[str, str]:
        """What a host's ``env`` must set for its commands to reach this engine."""

    def cli(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """The engine's own CLI (``docker``/``podman``), blocking: for set-up and checks."""


PODMAN_CONF = """\
[containers]
netns = "none"
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{d}/events.log"
tmp_dir = "{d}/tmp"
static_dir = "{d}/libpod"
volume_path = "{d}/volumes"
[network]
network_backend = "netavark"
network_config_dir = "{d}/networks"
"""

PODMAN_STORAGE = """\
[storage]
driver = "overlay"
runroot = "{d}/run"
graphroot = "{d}/root"
"""

CATATONIT = Path("/usr/libexec/podman/catatonit")
"""podman's init for ``init: true`` services."""


@dataclass
class PodmanEngine:
    """podman with runc and private storage; hosts reach it (and podman-compose) through ``env``."""

    directory: Path
    compose_bin: Path
    name: Literal["podman"] = "podman"
    compose_cmd: Literal["podman-compose"] = "podman-compose"

    @property
    def env(self) -> dict[str, str]:
        # An SSH session gets the system PATH, which lacks the venv holding podman-compose.
        path = f"{self.compose_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        return {
            "CONTAINERS_CONF": str(self.directory / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(self.directory / "storage.conf"),
            "PATH": path,
        }

    def cli(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["podman", *args],
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.env},
        )

    @classmethod
    def start(cls) -> PodmanEngine:
        require_tool("podman", "podman")
        require_tool("runc", "runc")
        busybox = require_tool("busybox", "busybox-static")
        compose_bin = Path(sys.executable).parent
        if not (compose_bin / "podman-compose").exists() and shutil.which("podman-compose") is None:
            pytest.fail(
                "required tool 'podman-compose' is missing; install it with: "
                ".venv/bin/pip install podman-compose (or run 'make dev')",
                pytrace=False,
            )
        if not (compose_bin / "podman-compose").exists():
            compose_bin = Path(str(shutil.which("podman-compose"))).parent
        if not CATATONIT.exists():
            pytest.fail(
                f"podman's init {CATATONIT} is missing (compose files use init: true); "
                "install it with: apt-get install -y catatonit",
                pytrace=False,
            )
        directory = Path(tempfile.mkdtemp(prefix="sbx-podman-", dir="/tmp"))
        (directory / "containers.conf").write_text(PODMAN_CONF.format(d=directory))
        (directory / "storage.conf").write_text(PODMAN_STORAGE.format(d=directory))
        engine = cls(directory, compose_bin)
        tar = _build_mini_tar(directory / "mini", busybox)
        engine.cli("import", str(tar), MINI_IMAGE)
        return engine

    def stop(self) -> None:
        """Remove every container and pod, then the engine's storage."""
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.cli("rm", "-a", "-f", "-t", "0", check=False)
            self.cli("pod", "rm", "-a", "-f", check=False)
            self.cli("system", "reset", "-f", check=False, timeout=120)
        _unmount_under(self.directory)
        shutil.rmtree(self.directory, ignore_errors=True)


ENGINES = ("docker", "podman")
"""The compose engines a test can ask for, by name."""


@dataclass
class _Shared:
    engines: dict[str, DockerEngine | PodmanEngine] = field(default_factory=dict)
    users: dict[str, int] = field(default_factory=dict)


_SHARED = _Shared()


@contextlib.contextmanager
def _shared_engine(name: str) -> Iterator[DockerEngine | PodmanEngine]:
    """One engine of each kind for the whole session, stopped when its last user is done.

    pytest makes one fixture per module that imports a fixture function, so
    the engine is shared here rather than by the fixture's scope.
    """
    if name not in _SHARED.engines:
        _SHARED.engines[name] = DockerEngine.start() if name == "docker" else PodmanEngine.start()
    _SHARED.users[name] = _SHARED.users.get(name, 0) + 1
    try:
        yield _SHARED.engines[name]
    finally:
        _SHARED.users[name] -= 1
        if _SHARED.users[name] == 0:
            _SHARED.engines.pop(name).stop()


@pytest.fixture(name="docker_engine", scope="session")
def docker_engine_fixture() -> Iterator[DockerEngine]:
    """A private Docker engine with ``localhost/mini:latest``, shared by the whole session."""
    with _shared_engine("docker") as engine:
        assert isinstance(engine, DockerEngine)
        yield engine


@pytest.fixture(name="podman_engine", scope="session")
def podman_engine_fixture() -> Iterator[PodmanEngine]:
    """podman with ``localhost/mini:latest`` in private storage, shared by the whole session."""
    with _shared_engine("podman") as engine:
        assert isinstance(engine, PodmanEngine)
        yield engine


@pytest.fixture(name="compose_engine", scope="session")
def compose_engine_fixture(request: pytest.FixtureRequest) -> Iterator[ComposeEngine]:
    """docker (dockerd + docker-compose) by default; the engine named by an indirect
    parameter (``docker`` or ``podman``) when a test runs on several."""
    name = getattr(request, "param", "docker")
    with _shared_engine(name) as engine:
        yield engine


@pytest.fixture(name="compose_hosts")
async def compose_hosts_fixture(
    ssh_hosts: SshHosts, compose_engine: ComposeEngine
) -> list[SshHostInfo]:
    """Two ``ssh_hosts`` (host1, host2) whose commands reach ``compose_engine``."""
    return await ssh_hosts(2, env=compose_engine.env, compose_cmd=compose_engine.compose_cmd)
